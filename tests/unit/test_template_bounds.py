"""Chat templates from untrusted GGUFs: loading is linear in the template's size; rendering is bounded in
output, time and the size of the values a template builds, always failing as a TemplateError."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from inference.errors import TemplateError
from inference.text.chat_template import CHATML, MAX_OUTPUT_CHARS, ChatTemplate

USER = [{"role": "user", "content": "x"}]
MIB = 2**20

LOAD_1MB = """
import sys, time
from inference.text.chat_template import ChatTemplate
source = sys.stdin.read()
start = time.perf_counter()
ChatTemplate(source)
print(time.perf_counter() - start)
"""


@pytest.mark.parametrize(
    "source",
    [
        "for " * (MIB // 4),  # a `for` that never reaches `in`: the old regex backtracked over all of it
        "for a in " * (MIB // 9),
        "{% for m in messages %}{{ m.content }}{% endfor %}{# " + "for x, y " * (MIB // 9) + "#}",
    ],
    ids=["for-for-for", "for-a-in", "comment"],
)
def test_a_1mb_adversarial_template_loads_in_under_a_second(source: str):
    assert len(source) >= MIB - 16
    try:  # in a child: before the fix this took hours, and a regex cannot be interrupted
        out = subprocess.run(
            [sys.executable, "-c", LOAD_1MB], input=source, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a 1 MB template did not load within 60 s")
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1.0


# -- output and time ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_template_that_loops_to_huge_output_is_a_template_error():
    source = (
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'xxxxxxxxxx' }}{% endfor %}{% endfor %}"
    )
    start = time.monotonic()
    with pytest.raises(TemplateError, match=rf"^chat template output exceeds {MAX_OUTPUT_CHARS} characters$"):
        ChatTemplate(source).render(USER)
    assert time.monotonic() - start < 10


def test_the_output_bound_is_set_per_template():
    template = ChatTemplate(CHATML, max_output_chars=100)
    assert len(template.render([{"role": "user", "content": "x" * 40}])) == 90
    with pytest.raises(TemplateError, match=r"^chat template output exceeds 100 characters$"):
        template.render([{"role": "user", "content": "x" * 60}])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for a in messages %}{% for b in messages %}{% for c in messages %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        "{% macro spin() %}{% for i in range(100000) %}{% endfor %}{% endmacro %}"
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ spin() }}{% endfor %}{% endfor %}",
    ],
    ids=["range-range", "messages-cubed", "macro"],
)
def test_a_template_that_runs_too_long_is_a_template_error(source: str):
    template = ChatTemplate(source, timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(TemplateError, match=r"^chat template rendering takes longer than 0.5 s$"):
        template.render(USER * 2000)
    assert time.monotonic() - start < 3


@pytest.mark.timeout(60)
def test_a_timed_out_render_leaves_its_thread_usable():
    """The interrupt is raised only inside the render: the same pool thread then renders and runs on."""
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    spin, quick = ChatTemplate(source, timeout_s=0.2), ChatTemplate(CHATML, timeout_s=0.2)

    def after_the_deadline() -> tuple[str, int]:
        text = quick.render(USER)
        end, n = time.monotonic() + 0.6, 0  # past this render's own deadline: nothing may fire
        while time.monotonic() < end:
            n += 1
        return text, n

    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(TemplateError, match="takes longer than 0.2 s"):
            pool.submit(spin.render, USER).result()
        text, spins = pool.submit(after_the_deadline).result()
    assert text == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n" and spins > 0


# -- values a template builds ------------------------------------------------------------------------

BUILDS = "chat template builds a value of"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "source, message",
    [
        ("{{ 'a' * 1000000000 }}", f"{BUILDS} 1000000000 items"),
        ("{{ messages[0].content * 1000000000 }}", f"{BUILDS} 1000000000 items"),
        ("{{ [0] * 1000000000 }}", f"{BUILDS} 1000000000 items"),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            BUILDS,
        ),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
            BUILDS,
        ),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s.replace('a', 'aa') %}"
            "{% endfor %}",
            BUILDS,
        ),
        (
            "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s|replace('a', 'aa') %}"
            "{% endfor %}",
            BUILDS,
        ),
        ("{{ messages[0].content.ljust(1000000000) }}", f"{BUILDS} 1000000000 items"),
        ("{{ messages[0].content|center(1000000000) }}", f"{BUILDS} 1000000000 items"),
        ("{{ ('\\n' * 1000000)|indent(1000, blank=true) }}", f"{BUILDS} 1001001000 items"),
        ("{{ messages|tojson(indent=1000000000) }}", f"{BUILDS} 1000000000 items"),
        ("{{ (['a' * 10000000] * 100)|join }}", f"{BUILDS} 1000000000 items"),
        ("{{ ''.join(['a' * 10000000] * 100) }}", f"{BUILDS} 1000000000 items"),
        ("{{ '{:>1000000000}'.format(messages[0].content) }}", "formats a field wider than"),
        ("{{ '%1000000000s' % messages[0].content }}", "formats a field wider than"),
        ("{{ '%*s' % (1000000000, messages[0].content) }}", "formats a field wider than"),
        ("{{ 7 ** 100000000 }}", "computes an integer of more than 16384 bits"),
        (
            "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
            "computes an integer of more than 16384 bits",
        ),
    ],
)
def test_a_value_beyond_the_bound_is_refused_before_it_is_built(source: str, message: str):
    start = time.monotonic()
    with pytest.raises(TemplateError, match=message):
        ChatTemplate(source, timeout_s=30).render(USER)
    assert time.monotonic() - start < 5  # refused by the size checks, not by the deadline


def test_a_huge_constant_is_refused_at_load():
    # Jinja folds constant filter calls while compiling: without the check this allocated 1 GB at load
    with pytest.raises(TemplateError, match=f"{BUILDS} 1000000000 items"):
        ChatTemplate("{{ 'a'|center(1000000000) }}")


def test_bounded_templates_still_render_what_they_did():
    source = (
        "{% set ns = namespace(s='') %}"
        "{% for m in messages %}{% set ns.s = ns.s ~ m.content|upper %}{% endfor %}"
        "{{ ns.s|replace('X', 'y') }}|{{ '%5d|{:>4}'.format(7) }}|{{ 2 ** 10 }}|{{ ('ab' * 3)|center(10) }}"
        "|{{ ['a', 'b']|join('-') }}|{{ '%3s' % 'x' }}"
    )
    assert ChatTemplate(source).render(USER * 3) == "yyy|%5d|   7|1024|  ababab  |a-b|  x"


def test_the_bounds_come_through_from_metadata():
    template = ChatTemplate.from_metadata({}, max_output_chars=60, timeout_s=0.25)
    assert (template.is_fallback, template.max_output_chars, template.timeout_s) == (True, 60, 0.25)
    with pytest.raises(TemplateError, match=r"^chat template output exceeds 60 characters$"):
        template.render([{"role": "user", "content": "x" * 30}])
