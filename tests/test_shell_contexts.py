"""Where quoting a `cmd` value is not enough: bash's arithmetic contexts, and options (docs/security.md).

Bash evaluates the *contents* of a variable as arithmetic in `$(( ))`, `(( ))`, `$[ ]`, `[[ -eq ]]`,
`[ -v ]`, `let`, `declare -i`, array subscripts and substring offsets, and arithmetic runs `$( )` inside an
array subscript: `n='a[$(touch pwned)]'; echo $(( n ))` runs `touch` however `n` is quoted. So a
`{{ }}` there must be a number: a string parameter there fails to load, and any value that is not a
plain number is refused before bash starts (templates from rules or `squall run` are checked too).
Option injection (`--output=...` as a value) is the pack author's part: `--` before the values.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.actions import build_action
from engine.config import SYSTEM_PACKS_PATH
from engine.packs import load_registry
from engine.parameters import ParameterError
from engine.runners.shell_template import numeric_placeholders, render_shell_command
from engine.templates import TemplateRenderError
from engine.yamlfile import ContentInvalid, LineMap
from tests.conftest import write

#: Each numeric context: a template with `{{ v }}` there, a number for v and what bash prints with it.
CONTEXTS: list[tuple[str, str, str, str]] = [
    ("$(( ))", "echo $(( {{ v }} + 1 ))", "41", "42"),
    ("(( ))", "(( {{ v }} > 40 )) && echo big", "41", "big"),
    ("[[ -eq ]]", '[[ "{{ v }}" -eq 41 ]] && echo same', "41", "same"),
    ("let", "let x={{ v }}+1; echo $x", "41", "42"),
    ("${a[ ]}", "a=(x y z); echo ${a[{{ v }}]}", "2", "z"),
    ("$[ ]", "echo $[ {{ v }} + 1 ]", "41", "42"),
]
#: More places bash evaluates a value as arithmetic, found by the same scanner.
MORE_CONTEXTS: list[tuple[str, str, str, str]] = [
    ("$(( ))", 'echo "$(( {{ v }} * 2 ))"', "-21", "-42"),
    ("$(( ))", "cat <<EOF\n$(( {{ v }} + 1 ))\nEOF", "41", "42"),
    ("let", 'let "x = {{ v }} + 1"; echo $x', "41", "42"),
    ("let", 'if let "x = {{ v }}"; then echo $x; fi', "41", "41"),
    ("(( ))", "for ((i = {{ v }}; i < 3; i++)); do printf %s $i; done", "1", "12"),
    ("[[ -lt ]]", '[[ ( 1 -lt "{{ v }}" ) ]] && echo less', "41", "less"),
    ("${a[ ]}", 'a=(x y z); echo "${a[{{ v }}]}"', "-1", "z"),
    ("${s:offset}", 's=abcdef; echo ${s:{{ v }}:2} "${s:1:{{ v }}}"', "2", "cd bc"),
    ("local -i", "f() { local -i n={{ v }}; echo $n; }; f", "41", "41"),
    ("array subscript of an assignment", "a[{{ v }}]=x; echo ${!a[@]}", "3", "3"),
    ("array subscript of an assignment", "a=([{{ v }}]=x); echo ${!a[@]}", "3", "3"),
    ("[ -v ]", 'a=(x y z); if [ -v "a[{{ v }}]" ]; then echo set; fi', "1", "set"),
    ("test -v", "a=(x y z); test ! -v 'a[{{ v }}]' || echo set", "2", "set"),
    # A variable given the integer attribute (`declare -i`, `local -ai`...) anywhere in the template
    # evaluates whatever is later assigned to it, and `unset` evaluates the subscript of its names.
    ("an assignment to the integer variable n", "declare -i n=0; n={{ v }}; echo $n", "41", "41"),
    ("an assignment to the integer variable n", 'declare -i n=1; n+="{{ v }}"; echo $n', "41", "42"),
    ("an assignment to the integer variable n", 'f() { local -i n; n="{{ v }}"; echo $n; }; f', "41", "41"),
    ("an assignment to the integer variable arr", 'declare -ai arr; arr=("{{ v }}"); echo "${arr[0]}"', "41", "41"),
    ("an assignment to the integer variable arr", "typeset -ia arr; arr[1]+={{ v }}; echo ${arr[1]}", "41", "41"),
    ("an assignment to the integer variable n", 'declare -gi n; declare n="{{ v }}"; echo $n', "41", "41"),
    ("an assignment to the integer variable n", "declare -i n; export n={{ v }}; echo $n", "41", "41"),
    ("an assignment to the integer variable r", "declare -i n; declare -n r=n; r={{ v }}; echo $n", "41", "41"),
    ("unset", 'a=(x y z); unset "a[{{ v }}]"; echo "${a[*]}"', "1", "x z"),
    ("${n:=}", 'declare -i n; : "${n:={{ v }}}"; echo $n', "41", "41"),
    ("${n:=}", "declare -i n; : ${n={{ v }}}; echo $n", "41", "41"),
    ("printf -v n", 'declare -i n; printf -v n %s "{{ v }}"; echo $n', "41", "41"),
    ("for n in", "declare -i n; for n in {{ v }}; do echo $n; done", "41", "41"),
]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


def canary(folder: Path) -> str:
    """A value that, evaluated as arithmetic, creates `folder/pwned`."""
    return f"a[$(touch {folder}/pwned)]"


def bash(text: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", text], env={"PATH": os.environ["PATH"], **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=10)


def render_and_run(template: str, value: str, cwd: Path) -> str:
    text, env = render_shell_command(template, {"v": value})
    proc = bash(text, env, cwd)
    assert proc.returncode == 0, (text, proc.stderr)
    return proc.stdout.strip()


# ---------------------------------------------------------------------------------------------
# At run time: a value that is not a plain number is refused before bash starts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("context", "template", "number", "expected"), CONTEXTS + MORE_CONTEXTS)
def test_the_canary_is_real_without_the_check(context: str, template: str, number: str, expected: str,
                                              scratch: Path) -> None:
    """The payload does run `touch` when bash expands it there from a quoted variable (what the
    quoter writes), so the refusals below are what keeps it from running."""
    text, env = render_shell_command(template, {"v": number})
    env = {name: canary(scratch) for name in env}
    bash(text, env, scratch)
    assert (scratch / "pwned").exists(), text


@pytest.mark.parametrize(("context", "template", "number", "expected"), CONTEXTS + MORE_CONTEXTS)
def test_a_value_that_is_no_number_is_refused_in_each_context(context: str, template: str, number: str,
                                                              expected: str, scratch: Path) -> None:
    for value in (canary(scratch), "1+1", "x", "", " 1", "1e400", "inf", "nan", "0x10", "1;2"):
        with pytest.raises(TemplateRenderError) as caught:
            render_shell_command(template, {"v": value})
        message = str(caught.value)
        assert f"inside {context} is not a plain number such as 42 or -1.5" in message
        assert "\n" not in message.replace(template, "") and message.count(". ") == 0
        assert "touch" not in message.replace(template, "")  # the value is not echoed (it may be a secret)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(("context", "template", "number", "expected"), CONTEXTS + MORE_CONTEXTS)
def test_numbers_still_work_in_each_context(context: str, template: str, number: str, expected: str,
                                            scratch: Path) -> None:
    assert render_and_run(template, number, scratch) == expected


def test_the_runtime_check_leaves_other_places_alone(scratch: Path) -> None:
    value = canary(scratch)
    for template, expected in [
        ('[[ "{{ v }}" == x ]] || printf %s "{{ v }}"', value),
        ("echo a[{{ v }}]", f"a[{value}]"),
        ("echo let {{ v }}", f"let {value}"),
        ("echo ${UNSET_X:-{{ v }}} $(( 1 + 1 ))", f"{value} 2"),
        ("declare -A h; h[{{ v }}]=1; echo ${h[{{ v }}]}", "1"),  # associative: the key is a string
        ('[ "{{ v }}" -eq 1 ] 2>/dev/null || echo no', "no"),  # test/[ take numbers, no expressions
        ("echo {{ v }} # let x={{ v }}", value),
        ("cat <<EOF\n$(( 1 )) {{ v }}\nEOF", f"1 {value}"),
    ]:
        assert render_and_run(template, value, scratch) == expected, template
    assert list(scratch.iterdir()) == []


def test_a_here_string_is_no_here_document(scratch: Path) -> None:
    """`<<< 'x'` once opened a quoted here-document on the next line, where values are written as they
    are: the value on that line ran as shell code. A here-string's word is a word like any other."""
    value = f"$(touch {scratch}/pwned)"
    assert render_and_run("cat <<< 'x'\necho {{ v }}", value, scratch) == f"x\n{value}"
    assert render_and_run('read -r line <<< "{{ v }}"; echo "$line"', value, scratch) == value
    assert list(scratch.iterdir()) == []


def test_a_command_substitution_inside_arithmetic_quotes_normally(scratch: Path) -> None:
    template = "echo $(( $(printf %s {{ v }} | wc -c) + `printf %s {{ v }} | wc -c` ))"
    text, _ = render_shell_command(template, {"v": "x"})
    assert text == 'echo $(( $(printf %s "${SQUALL_ARG_0}" | wc -c) + `printf %s "${SQUALL_ARG_1}" | wc -c` ))'
    value = canary(scratch)
    assert render_and_run(template, value, scratch) == str(2 * len(value))
    assert list(scratch.iterdir()) == []
    assert numeric_placeholders(template) == []
    # ... and arithmetic inside that substitution is arithmetic again
    with pytest.raises(TemplateRenderError, match=r"inside \$\(\( \)\)"):
        render_shell_command("echo $(( $(echo $(( {{ v }} ))) ))", {"v": value})


# ---------------------------------------------------------------------------------------------
# End to end: a loaded action run through Squall
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def home(home: Path) -> Path:
    pack = home / "packs" / "ctx"
    write(pack / "pack.yaml", "name: ctx\ndescription: d\nversion: 0.1.0\nauthor: t\n")
    write(pack / "actions" / "count.yaml", """
        name: count
        runner_type: local-shell-cmd
        parameters:
          n: {type: integer, required: true}
          cmd: {default: 'echo $(( {{ n }} + 1 ))', immutable: true}
    """)
    write(pack / "actions" / "scale.yaml", """
        name: scale
        runner_type: local-shell-cmd
        parameters:
          x: {type: number, required: true}
          cmd: {default: 'echo $(( {{ x }} * 2 ))', immutable: true}
    """)
    write(pack / "actions" / "free.yaml", """
        name: free
        runner_type: local-shell-cmd
        parameters:
          v: {type: string}
          cmd: {default: 'echo hello'}
    """)
    return home


async def run(app: Squall, ref: str, params: dict[str, Any]) -> dict[str, Any]:
    # `cmd` as a rule gives it: a template (a value a person types is data and does not render)
    record = await app.executions.request(ref, params, render=["cmd"])
    return await app.executions.wait(record["id"], timeout=30)


async def test_number_parameters_run_in_arithmetic(squall: Squall) -> None:
    done = await run(squall, "ctx.count", {"n": "41"})
    assert (done["status"], done["result"]["stdout"]) == ("succeeded", 42)
    done = await run(squall, "ctx.scale", {"x": -21})
    assert (done["status"], done["result"]["stdout"]) == ("succeeded", -42)


async def test_a_number_bash_would_misread_never_reaches_the_shell(squall: Squall, scratch: Path) -> None:
    """1e400 casts to inf; inf and nan are numbers to the schema but words to bash (variable names,
    which could hold anything): refused like any other non-number."""
    for value in ("1e400", "-1e400", "nan", float("inf")):
        with pytest.raises(ParameterError, match="not a finite number"):  # refused before it is stored
            await run(squall, "ctx.scale", {"x": value})


@pytest.mark.parametrize(("context", "template", "number", "expected"), CONTEXTS)
async def test_a_template_from_the_caller_is_checked_at_run_time(squall: Squall, scratch: Path, context: str,
                                                                 template: str, number: str, expected: str) -> None:
    """`cmd` templates that were never loaded (a rule's action parameters) are checked when rendered."""
    done = await run(squall, "ctx.free", {"cmd": template, "v": canary(scratch)})
    assert done["status"] == "failed"
    assert f"inside {context} is not a plain number" in str(done["result"])
    assert list(scratch.iterdir()) == []
    done = await run(squall, "ctx.free", {"cmd": template, "v": number})
    assert (done["status"], str(done["result"]["stdout"])) == ("succeeded", expected)


#: The templates a review found running a string value's `$( )` through an integer variable or `unset`.
INTEGER_VARIABLE_TEMPLATES = [
    "declare -i n=0; n={{ v }}",
    'declare -i n; n+="{{ v }}"',
    'f() { local -i n; n="{{ v }}"; }; f',
    'declare -ai arr; arr=("{{ v }}")',
    'a=(x y); unset "a[{{ v }}]"',
]


@pytest.mark.parametrize("template", INTEGER_VARIABLE_TEMPLATES)
async def test_an_integer_variable_assignment_from_the_caller_is_checked(squall: Squall, scratch: Path,
                                                                         template: str) -> None:
    """End to end through a rule-style `cmd`: the value never reaches bash, so `touch` never runs."""
    done = await run(squall, "ctx.free", {"cmd": template, "v": canary(scratch)})
    assert done["status"] == "failed"
    assert "is not a plain number" in str(done["result"])
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# At load time: only integer and number parameters may go where bash does arithmetic
# ---------------------------------------------------------------------------------------------


def action(cmd: str, ptype: Any = "string", runner: str = "local-shell-cmd") -> Any:
    parameters: dict[str, Any] = {"v": {"type": ptype} if ptype is not None else {}, "cmd": {"default": cmd}}
    return build_action({"name": "a", "runner_type": runner, "parameters": parameters}, LineMap(None),
                        pack="demo", pack_path=Path("/nonexistent"), file="meta.yaml")


@pytest.mark.parametrize(("context", "template", "number", "expected"), CONTEXTS + MORE_CONTEXTS)
def test_a_string_parameter_there_fails_to_load(context: str, template: str, number: str, expected: str) -> None:
    for runner in ("local-shell-cmd", "remote-shell-cmd"):
        with pytest.raises(ContentInvalid) as caught:
            action(template, "string", runner)
        assert caught.value.error.reason == (
            f'cmd: "{{{{ v }}}}" is inside {context}, where bash evaluates it as arithmetic (and runs $( ) '
            'inside array subscripts); only an integer or number parameter may go there, and "v" is a string')


@pytest.mark.parametrize(("context", "template", "number", "expected"), CONTEXTS + MORE_CONTEXTS)
def test_integer_and_number_parameters_load(context: str, template: str, number: str, expected: str) -> None:
    for ptype in ("integer", "number", ["integer", "null"]):
        assert action(template, ptype).parameters["v"]["type"] == ptype
    assert action(template.replace("{{ v }}", "{{ v | int }}"), "integer")
    assert action(template.replace("{{ v }}", "{{ 7 }}"), "string")


@pytest.mark.parametrize(("cmd", "ending"), [
    ("echo $(( {{ v }} ))", '"v" has no type'),
    ("echo $(( {{ other }} ))", '"other" is not a parameter of this action'),
    ("echo $(( {{ v + 1 }} ))", '"v + 1" is not a parameter name'),
    ("echo $(( {{ v | int }} ))", '"v" has no type'),
    ("{% if v %}echo $(( {% if v %}{{ v }}{% endif %} )){% endif %}", '"v" has no type'),
    ("echo {{ v }}; let x={{ v }}", '"v" has no type'),
    ("[[ {{ v }} == x || {{ v }} -gt 1 ]]", '"v" has no type'),
    ("[[ -v a[{{ v }}] ]]", '"v" has no type'),
    ("[ -v {{ v }} ]", '"v" has no type'),
    ('echo ok && test -v "{{ v }}"', '"v" has no type'),
])
def test_what_fails_to_load(cmd: str, ending: str) -> None:
    with pytest.raises(ContentInvalid) as caught:
        action(cmd, None)
    assert caught.value.error.reason.startswith("cmd: ")
    assert caught.value.error.reason.endswith(f"only an integer or number parameter may go there, and {ending}")


@pytest.mark.parametrize("cmd", [
    'echo "{{ v }}"',
    '[[ "{{ v }}" == prod ]] && echo yes',
    "[[ -n {{ v }} && {{ v }} != x ]]",
    "echo $(( $(printf %s {{ v }} | wc -c) + 1 ))",
    "echo $(( 1 + 1 )) {{ v }}",
    "echo ${a[0]} ${x:-{{ v }}} a[{{ v }}]",
    "declare -A h; h[{{ v }}]=1; echo ${h[{{ v }}]}",
    "{% set n %}$(( {{ v }}{% endset %}echo {{ n }}",  # a block's output is a value like any other
    "{% macro m(a) %}$(( {{ a }} )){% endmacro %}echo {{ m(v) }}",
    "cat <<'EOF'\n$(( {{ v }} ))\nEOF",  # a quoted here-document expands nothing
    "echo {{ unclosed",  # not Jinja: rendering reports it
    '[ -n "{{ v }}" ] && [ -v HOME ]; test "{{ v }}" = x; [ -v PATH ]; echo {{ v }}',  # -v names no value here
])
def test_what_loads_with_a_string_parameter(cmd: str) -> None:
    assert action(cmd, "string").runner_type == "local-shell-cmd"


def test_only_the_declared_integer_variables_are_arithmetic() -> None:
    """The integer attribute belongs to the names declared with it: other assignments, words that only
    look like assignments and `for`/`printf -v` into other variables still take a string, while the
    same template assigning the declared name does not load."""
    kept = ('declare -i n=0; m={{ v }}; echo n={{ v }}; n=1 env X={{ v }} true; printf -v out %s "{{ v }}"; '
            'for x in {{ v }}; do echo "$x $n"; done; read -r line <<< "{{ v }}"; echo "${m:={{ v }}}"')
    assert action(kept, "string").runner_type == "local-shell-cmd"
    for assigned in ("m={{ v }}", "printf -v out %s", "for x in", "m:="):
        changed = kept.replace(assigned, assigned.replace("m", "n").replace("out", "n").replace("x", "n"), 1)
        with pytest.raises(ContentInvalid, match="where bash evaluates it as arithmetic"):
            action(changed, "string")


@pytest.mark.parametrize("template", [
    'declare -i n; read n <<< "{{ v }}"',
    'declare -i n; echo "{{ v }}" | while read -r n; do echo $n; done',
    'declare -ai a; mapfile -t a < <(echo "{{ v }}")',
    'local -ia a; echo {{ v }} | readarray a',
])
def test_reading_into_an_integer_variable_is_refused(template: str, scratch: Path) -> None:
    """What `read` or `mapfile` assigns to an integer variable is arithmetic, and where it comes from
    (stdin) cannot be followed: such a template does not load, whatever the parameter's type, and
    does not render, whatever the value."""
    reader = "mapfile" if "mapfile" in template else "readarray" if "readarray" in template else "read"
    for ptype in ("string", "integer"):
        with pytest.raises(ContentInvalid) as caught:
            action(template, ptype)
        assert caught.value.error.reason.startswith(f"cmd: {reader} assigns what it reads to the integer variable")
        assert "pass the number as an integer parameter" in caught.value.error.reason
    for value in ("41", canary(scratch)):
        with pytest.raises(TemplateRenderError, match=f"{reader} assigns what it reads to the integer variable"):
            render_shell_command(template, {"v": value})
    assert action(template.replace("{{ v }}", "x"), "string")  # no value can reach it
    assert list(scratch.iterdir()) == []


def test_the_load_error_names_the_file_and_line(tmp_path: Path) -> None:
    packs = tmp_path / "packs"
    write(packs / "demo" / "pack.yaml", "name: demo\ndescription: d\nversion: 0.1.0\nauthor: t\n")
    write(packs / "demo" / "actions" / "count.yaml", """
        name: count
        runner_type: local-shell-cmd
        parameters:
          n:
            type: string
          cmd:
            default: 'echo $(( {{ n }} + 1 ))'
            immutable: true
    """)
    registry = load_registry([packs], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert "demo.count" not in registry.actions
    [error] = registry.errors
    assert error.file.endswith("demo/actions/count.yaml")
    assert error.line == 7
    assert '"{{ n }}" is inside $(( ))' in error.reason and '"n" is a string' in error.reason


def test_numeric_placeholders_reports_each_context() -> None:
    template = ('{% for x in xs %}echo {{ s }} $(( {{ n }} )){% endfor %}{# $(( {{ c }} )) #} '
                '{% raw %}$(( {{ r }} )){% endraw %} [[ {{ a }} -ge 1 ]] ${arr[{{ i | int }}]}')
    assert numeric_placeholders(template) == [("n", "$(( ))"), ("a", "[[ -ge ]]"), ("i | int", "${arr[ ]}")]


# ---------------------------------------------------------------------------------------------
# Option injection: `--` is the pack author's part
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "repo"
    folder.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    for argv in (["git", "init", "-q"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty",
                  "-m", "first"]):
        subprocess.run(argv, cwd=folder, env=env, check=True, capture_output=True)
    return folder


def git_log(template: str, ref: str, repo: Path) -> subprocess.CompletedProcess[str]:
    action(template, "string")  # loads: options are not something the loader can see
    text, env = render_shell_command(template, {"ref": ref})
    env.update(HOME=str(repo.parent), GIT_CONFIG_NOSYSTEM="1")
    return bash(text, env, repo)


def test_after_double_dash_an_option_is_only_a_path(repo: Path, scratch: Path) -> None:
    """`git log -- {{ ref }}`: the value can only be a path, even `--output=FILE`."""
    proc = git_log("git log --oneline -- {{ ref }}", f"--output={scratch}/pwned", repo)
    assert proc.returncode == 0, proc.stderr
    assert list(scratch.iterdir()) == []


def test_without_double_dash_a_value_can_be_an_option(repo: Path, scratch: Path) -> None:
    """`git log {{ ref }}`: quoting keeps the value one word, but git still reads a word that starts
    with `-` as an option, and `--output=FILE` writes a file. Squall cannot know which commands take
    which options, so this is the pack author's to prevent: put `--` before values (as above), or
    declare the parameter with a `pattern` such as "^[^-]"."""
    proc = git_log("git log --oneline {{ ref }}", f"--output={scratch}/pwned", repo)
    assert proc.returncode == 0, proc.stderr
    assert (scratch / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# The associative-array exemption: only a `declare -A` that bash is sure to have run counts
# ---------------------------------------------------------------------------------------------

#: Templates a review found running a string key's `$( )`: each has a `declare -A` for the array's name
#: that bash does not run (or runs elsewhere, later, or undoes) before the `${a[...]}`/`a[...]=` it exempted.
ASSOCIATIVE_BYPASSES = {
    "function-local, top-level indexed": (
        'show() { local -A names=([web]="Web tier" [db]=Database); echo "${names[$1]:-unknown}"; }\n'
        'names=(primary secondary)\necho "$(show "{{ v }}") on ${names[{{ v }}]:-none}"'),
    "declared after the use": 'echo "slot: ${slots[{{ v }}]}"\ndeclare -A slots=([web]=1)',
    "assigned before the declaration": "a[{{ v }}]=1; declare -A a",
    "in a comment": '# TODO: declare -A slots once the hosts have bash 4\nslots=(a b c)\necho "${slots[{{ v }}]}"',
    "in a here-document": "cat <<E\ndeclare -A a\nE\na[{{ v }}]=1",
    "an argument of :": ": declare -A a; a[{{ v }}]=1",
    "an argument after a line continuation": "echo \\\ndeclare -A a\na[{{ v }}]=1",
    "in an if false branch": "if false; then declare -A a; fi; a[{{ v }}]=1",
    "after &&": "false && declare -A a; a[{{ v }}]=1",
    "in a pipeline (a subshell)": "declare -A a | cat; a[{{ v }}]=1",
    "in a pipeline across lines": "echo x |\ndeclare -A a\na[{{ v }}]=1",
    "in a function body": "f() {\n  declare -A a\n}\na[{{ v }}]=1",
    "in a subshell": "(declare -A a); a[{{ v }}]=1",
    "refused by bash (already indexed)": "declare -a a; declare -A a 2>/dev/null; a[{{ v }}]=1",
    "unset afterwards": "declare -A a 2>/dev/null; unset a; a[{{ v }}]=1",
    "unset in a subshell": "declare -A a; (unset a; a[{{ v }}]=1)",
    "shadowed by a local": "declare -A a; f() { local a; a[{{ v }}]=1; }; f",
    "unset through a nameref": "declare -A a; declare -n r=a; unset r; echo ${a[{{ v }}]}",
    "a word inside a quoted value": 'declare -A m=([k]="x y z"); y[{{ v }}]=1',
    "a pipeline continued past a comment": "echo x | # the map\ndeclare -A a\na[{{ v }}]=1",
    "a function keyword body": "function f {\n  declare -A a\n}\na[{{ v }}]=1",
    "a case branch after a fi| pattern": "case x in fi|y) declare -A a;; esac; a[{{ v }}]=1",
    "unset through ${!a*}": "declare -A a=([k]=1); unset ${!a*}; a[{{ v }}]=1",
    "an array bash keeps indexed": "declare -A GROUPS 2>/dev/null; echo ${GROUPS[{{ v }}]}",
}


@pytest.mark.parametrize("template", ASSOCIATIVE_BYPASSES.values(), ids=ASSOCIATIVE_BYPASSES.keys())
def test_a_declare_a_bash_does_not_run_first_exempts_nothing(template: str, scratch: Path) -> None:
    """The array is indexed where the value lands, so its subscript is arithmetic: a string parameter
    there fails to load, and a value that is no number is refused before bash starts."""
    text, env = render_shell_command(template, {"v": "1"})  # a number passes; the canary would run:
    bash(text, {name: canary(scratch) for name in env}, scratch)
    assert (scratch / "pwned").exists(), text
    (scratch / "pwned").unlink()
    with pytest.raises(ContentInvalid) as caught:
        action(template, "string")
    assert "where bash evaluates it as arithmetic" in caught.value.error.reason
    with pytest.raises(TemplateRenderError, match="is not a plain number such as 42"):
        render_shell_command(template, {"v": canary(scratch)})
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(("template", "key", "expected"), [
    ('declare -A m=([a]=1 [b]=2)\necho "${m[{{ v }}]}"', "b", "2"),
    ('set -e\ndeclare -A m=([a]=1 [b]=2); echo "${m[{{ v }}]:-none} ${m[a]}"', "b", "2 1"),
    ("typeset -A m; m[{{ v }}]=x; echo ${m[{{ v }}]} ${!m[@]}", "web tier", "x web tier"),
    ('f() { :; }\nif true; then :; fi\n  declare -gA m=([a]=1) # keys\nm[{{ v }}]+=2; echo "${m[{{ v }}]}"', "a", "12"),
])
def test_a_top_level_declare_a_before_the_use_exempts_its_keys(template: str, key: str, expected: str,
                                                              scratch: Path) -> None:
    """The legitimate case: a `declare -A` run at top level before the array is used. A string parameter
    loads, any string is a key, and the canary's `$( )` is only text."""
    assert action(template, "string").runner_type == "local-shell-cmd"
    assert render_and_run(template, key, scratch) == expected
    render_and_run(template, canary(scratch), scratch)
    assert list(scratch.iterdir()) == []
