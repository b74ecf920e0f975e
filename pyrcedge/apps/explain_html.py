"""A self-contained HTML heat map of an attribution (pyrcedge explain --html)."""

from __future__ import annotations

import html
import math

from ..features.attribution import Attribution

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pyrcedge explain</title>
<style>
body {{ font: 16px/1.6 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; color: #222; }}
.ctx {{ white-space: pre-wrap; }}
.span {{ border-radius: 3px; }}
.span.top {{ outline: 3px solid rgb(200, 30, 30); }}
.span.evicted {{ color: #999; text-decoration: line-through; }}
.answer {{ background: #f4f4f4; padding: .75rem 1rem; border-left: 4px solid #888; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .2rem .6rem; border-bottom: 1px solid #ddd; }}
</style></head>
<body data-top-span="{top_id}">
<h1>Which parts of the context the answer drew on</h1>
<p><b>Question:</b> {question}</p>
<div class="answer"><b>Answer:</b> {answer}</div>
<p>Method: {method}{heads}. Darker = higher score; the top span is outlined; struck-through
spans were evicted from the KV cache before the answer.</p>
<div class="ctx">{body}</div>
<h2>Top spans</h2>
<table><tr><th>#</th><th>score</th><th>span</th></tr>{rows}</table>
<script>
// report what the browser rendered for the top span (tests read it back from the DOM)
const best = document.getElementById(document.body.dataset.topSpan);
if (best) {{
  const st = getComputedStyle(best);
  document.body.dataset.topRendered = st.outlineStyle + " " + st.outlineColor + " " + st.backgroundColor;
}}
</script>
</body></html>
"""


def render_html(context: str, question: str, answer: str, result: Attribution,
                char_spans: list[tuple[int, int]], top_n: int = 5) -> str:
    """The context with each span shaded by its score (char_spans: the spans' places in it)."""
    scores = [s.score for s in result.spans]
    finite = [x for x in scores if not math.isnan(x)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    ranked = result.ranked()
    top = ranked[0] if ranked else None
    parts, at = [], 0
    order = sorted(range(len(char_spans)), key=lambda k: char_spans[k][0])
    for k in order:
        s, e = char_spans[k]
        if s < at:
            continue
        parts.append(html.escape(context[at:s]))
        sp = result.spans[k]
        cls = ["span"]
        if sp.evicted:
            cls.append("evicted")
            style = ""
        else:
            w = 0.0 if hi == lo else (sp.score - lo) / (hi - lo)
            style = f' style="background: rgba(255, 170, 0, {0.08 + 0.8 * w:.3f})"'
        if sp is top:
            cls.append("top")
        title = "evicted" if sp.evicted else f"score {sp.score:.4g}"
        parts.append(f'<span id="s{k}" class="{" ".join(cls)}"{style} title="{title}">'
                     f"{html.escape(context[s:e])}</span>")
        at = e
    parts.append(html.escape(context[at:]))
    rows = "".join(f"<tr><td>{i + 1}</td><td>{sp.score:.4g}</td><td>{html.escape(sp.label or sp.text)}"
                   f"</td></tr>" for i, sp in enumerate(ranked[:top_n]))
    heads = f" over heads {', '.join(f'L{layer}/H{g}' for layer, g in result.heads)}" if result.heads else ""
    top_id = f"s{result.spans.index(top)}" if top is not None else ""
    return _PAGE.format(top_id=top_id, question=html.escape(question), answer=html.escape(answer),
                        method=html.escape(result.method), heads=html.escape(heads),
                        body="".join(parts), rows=rows)
