"""The bounds on a model's chat template (pyrcedge/llama/chat_template.py): every operation that
could take the process's memory or hours of CPU in one step is refused before it runs, and real
templates render exactly as in llama_cpp's own environment."""

from __future__ import annotations

import time

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import llama_chat_format

import pyrcedge
from pyrcedge.assets.gguf_header import read_metadata
from pyrcedge.llama.chat_template import (
    MAX_TEMPLATE_CHARS,
    BoundedEnvironment,
    BoundedTemplate,
    bounded_environments,
)


def environment(cls: type = BoundedEnvironment) -> ImmutableSandboxedEnvironment:
    env = cls(trim_blocks=True, lstrip_blocks=True)     # as llama_cpp's Jinja2ChatFormatter
    env.filters["tojson"] = llama_chat_format.Jinja2ChatFormatter.tojson
    return env


def render(source: str, **given) -> str:
    return BoundedTemplate(environment().from_string(source)).render(**given)


# Each would allocate 10 GB or more in one operation, or compute for minutes or hours, in
# llama_cpp's own sandbox (the first one while the template compiles).
HOSTILE = {
    "repeat": "{{ 'a' * 10**10 }}",
    "repeat twice": "{{ ('a' * 10**4) * 10**6 }}",
    "list repeat": "{{ [1] * 10**9 }}",
    "power": "{{ 9 ** (9 ** 9) }}",
    "squaring loop": "{% set ns = namespace(n=3) %}{% for i in range(60) %}"
                     "{% set ns.n = ns.n * ns.n %}{% endfor %}{{ ns.n > 1 }}",
    "method width": "{{ 'a'.center(10**10) }}",
    "filter width": "{{ 'a'|center(10**10) }}",
    "percent width": "{{ '%10000000000d' % 1 }}",
    "percent star": "{{ '%*d' % (10**10, 1) }}",
    "format width": "{{ '{:>10000000000}'.format(1) }}",
    "format nested": "{{ '{:{}}'.format(1, 10**10) }}",
    "concat doubling": "{% set ns = namespace(s='a') %}{% for i in range(60) %}"
                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "plus doubling": "{% set ns = namespace(s='a') %}{% for i in range(60) %}"
                     "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "replace filter": "{{ ('ab' * 10**5)|replace('', 'x' * 10**5) }}",
    "replace method": "{{ ('ab' * 10**5).replace('', 'x' * 10**5) }}",
    "join method": "{{ ('x' * 10**5).join(['a'] * 10**5) }}",
    "indent": "{{ ('a\\n' * 10**6)|indent('x' * 10**5) }}",
    "wordwrap": "{{ ('a ' * 10**6)|wordwrap(1, wrapstring='x' * 10**4) }}",
    "tojson indent": "{{ ([['a'] * 100] * 100)|tojson(indent=10**5) }}",
    "expandtabs": "{{ ('\\t' * 10**5).expandtabs(10**5) }}",
    "batch fill": "{{ ('a' * 10**4)|batch(10**5, 'y' * 10**5)|list }}",
    "output": "{% for i in range(99999) %}{{ 'x' * 10**4 }}{% endfor %}",
    "nested loops": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}"
                    "{% endfor %}",
    # a generator's size is known only once it has run: joined, it made 10 GB in 75 s
    "join generator": "{{ ('x' * 10**6).join(range(10**4)|map('string')) }}",
    "join filter generator": "{{ range(10**4)|map('string')|join('x' * 10**6) }}",
}


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_template_is_refused_in_a_moment(source):
    t = time.perf_counter()
    template = environment().from_string(source)      # nothing folded into a constant
    assert time.perf_counter() - t < 1
    with pytest.raises(pyrcedge.GenerationInputError, match="chat template"):
        BoundedTemplate(template).render(messages=[])
    assert time.perf_counter() - t < 5


# A filter runs over up to 100,000 items in one step of a loop: hours, under the step limit
SLOW = ["{% for i in range(99999) %}{% set x = range(99999)|map('string')|list %}{% endfor %}",
        "{% for i in range(99999) %}{% set x = range(99999)|select('odd')|list %}{% endfor %}"]


@pytest.mark.parametrize("source", SLOW)
def test_a_template_that_works_for_hours_in_few_steps_is_stopped_by_the_clock(source):
    t = time.perf_counter()
    with pytest.raises(pyrcedge.GenerationInputError, match="ran for more than 1 s"):
        BoundedTemplate(environment().from_string(source), max_seconds=1).render(messages=[])
    assert time.perf_counter() - t < 3


def test_lipsum_is_not_offered():
    # Jinja's lorem-ipsum global runs Python per word: no size check bounds its time
    with pytest.raises(Exception, match="lipsum"):
        render("{{ lipsum(1000) }}")


# Features real chat templates use (after the ChatML, Llama 3 and Mistral families, with
# tools); each must render as in llama_cpp's environment.
REAL = [
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    "{{ bos_token }}{% for message in messages %}{% set content = '<|start_header_id|>' ~ "
    "message['role'] ~ '<|end_header_id|>\\n\\n' ~ message['content']|trim ~ '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token ~ content %}{% endif %}{{ content }}"
    "{% endfor %}{% if tools %}{{ tools|tojson(indent=4) }}{% endif %}",
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m.role == 'system' %}"
    "{% set ns.system = ns.system + m.content %}{% endif %}{% endfor %}"
    "{% for m in messages|rejectattr('role', 'equalto', 'system') %}"
    "{% if loop.first and ns.system %}{{ '[INST] %s\\n\\n%s [/INST]'|format(ns.system, m.content) }}"
    "{% elif m.role == 'user' %}{{ '[INST] {} [/INST]'.format(m.content) }}"
    "{% else %}{{ m.content|replace('  ', ' ') ~ eos_token }}{% endif %}{% endfor %}"
    "{{ messages|map(attribute='role')|join(', ')|center(30) }}{{ (messages|length * 2) % 7 }}",
]
MESSAGES = [{"role": "system", "content": "Be brief."},
            *({"role": r, "content": f"turn {i}:  some text " * 5}
              for i, r in zip(range(8), ["user", "assistant"] * 4))]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"x": [1, 2, {"y": "z"}]}}}]


@pytest.mark.parametrize("source", REAL)
def test_real_template_features_render_as_in_llama_cpp(source):
    given = dict(messages=MESSAGES, bos_token="<s>", eos_token="</s>", add_generation_prompt=True,
                 tools=TOOLS)
    stock = environment(ImmutableSandboxedEnvironment).from_string(source).render(**given)
    assert stock and render(source, **given) == stock


def test_the_default_model_template_renders_as_in_llama_cpp(default_model):
    source = read_metadata(default_model)["tokenizer.chat_template"].value
    given = dict(messages=MESSAGES, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
    stock = environment(ImmutableSandboxedEnvironment).from_string(source).render(**given)
    assert render(source, **given) == stock


def test_the_limits_grow_with_the_input():
    # a document larger than the fixed limit goes through a template that adds to it
    document = "word " * (MAX_TEMPLATE_CHARS // 4)
    out = render("{% for m in messages %}{{ '<|user|>' + m.content ~ '<|end|>' }}{% endfor %}",
                 messages=[{"role": "user", "content": document}])
    assert len(out) == len(document) + len("<|user|><|end|>")
    with pytest.raises(pyrcedge.GenerationInputError):     # but not a multiple of it
        render("{{ messages[0].content * 5 }}", messages=[{"role": "user", "content": document}])


def test_llama_cpp_gets_its_environment_back():
    stock = llama_chat_format.ImmutableSandboxedEnvironment
    with bounded_environments():
        with bounded_environments():
            assert llama_chat_format.ImmutableSandboxedEnvironment is BoundedEnvironment
        assert llama_chat_format.ImmutableSandboxedEnvironment is BoundedEnvironment
    assert llama_chat_format.ImmutableSandboxedEnvironment is stock
    with pytest.raises(RuntimeError), bounded_environments():
        raise RuntimeError
    assert llama_chat_format.ImmutableSandboxedEnvironment is stock
