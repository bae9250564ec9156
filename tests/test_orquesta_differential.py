"""Squall's Orquesta conductor against real orquesta (StackStorm/orquesta 1.6.0): workflows fed
the same outcomes in the same order, and what orquesta's `WorkflowConductor` made of them (the
status, the output, the errors, the actions run with their input), recorded here as constants.

Each scenario is driven as StackStorm drives a conductor: the start calls, then each listed outcome
(`task` or `task[item]`, its status and result; `$input` returns the call's own input), then every
call still pending succeeds, oldest first. The findings the scenarios pin down:

- F1: once the workflow fails, every task that completes afterwards (the failing one too) is terminal,
  so the output sees what the other branches published.
- F2: two transitions of one task into a join both arrive before it starts; a join counts an inbound
  task once, whichever of its transitions was taken.
- F3: with items under a concurrency, items keep starting while another is running after one failed;
  the task fails once none is running; nothing starts once the workflow failed.
- F4: inline `publish: k=v` and `action: ref k=v` parse as orquesta's `parse_inline_params` (JSON
  values, quoted strings, expressions; a bare word is dropped; inline parameters replace `input`).
- F5: `join: N` runs again for each branch arriving after it started, on that branch's contexts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.workflows.model import TaskCall
from engine.workflows.orquesta import OrquestaConductor, parse_inline_params
from engine.workflows.service import load_spec
from engine.yamlfile import ContentInvalid
from tests.conftest import write


def drive(tmp_path: Path, text: str, steps: list[list[Any]]) -> dict[str, Any]:
    """Conduct `text` through `steps` (see the module docstring); what it ran and how it ended."""
    spec = load_spec("orquesta", write(tmp_path / "workflow.yaml", text), "workflow.yaml")
    flow = OrquestaConductor(spec, {}, {"workflow_execution_id": "wf1"})
    pending: list[TaskCall] = []
    runs: list[list[Any]] = []

    def add(calls: list[TaskCall]) -> None:
        for call in calls:
            pending.append(call)
            runs.append([call.task, call.context["orquesta"].get("item_id"), call.parameters])

    def finish(call: TaskCall, status: str, result: Any) -> None:
        pending.remove(call)
        add(flow.on_done(call.key, status, call.parameters if result == "$input" else result, None))

    def find(label: str) -> TaskCall | None:
        name, _, item = label.rstrip("]").partition("[")
        return next((c for c in pending
                     if c.task == name and (not item or c.context["orquesta"]["item_id"] == int(item))), None)

    add(flow.start())
    skipped = []  # outcomes listed for a call that never came
    for label, status, result in steps:
        call = find(label)
        if call is None:
            skipped.append(label)
        else:
            finish(call, status, result)
    while pending:
        finish(pending[0], "succeeded", "$input")
    assert flow.finished
    outcome = flow.outcome()
    got: dict[str, Any] = {"status": outcome.status, "output": outcome.result["output"],
                           "runs": sorted(runs, key=repr)}
    if outcome.status == "failed":
        got["errors"] = [error["message"] for error in outcome.result["errors"]]
    if skipped:
        got["skipped"] = skipped
    return got


TERMINAL_ON_FAILURE = """
version: 1.0
tasks:
  pa:
    action: core.echo
    input: {message: pa}
    next:
      - publish: [from_a: 1]
        do: a
  a:
    action: core.echo
    input: {message: a}
    next:
      - when: <% succeeded() %>
        publish: [a_ok: 1]
        do: a2
  a2:
    action: core.echo
    input: {message: a2}
  pb:
    action: core.echo
    input: {message: pb}
    next:
      - publish: [from_b: 1]
        do: b
  b:
    action: core.echo
    input: {message: b}
    next:
      - when: <% succeeded() %>
        do: b2
  b2:
    action: core.echo
    input: {message: b2}
output:
  - from_a: <% ctx().get(from_a, none) %>
  - from_b: <% ctx().get(from_b, none) %>
"""

REMEDIATION = """
version: 1.0
tasks:
  a:
    action: core.echo
    input: {message: a}
    next:
      - when: <% failed() %>
        publish: [err: <% result() %>]
        do: fix
      - when: <% succeeded() %>
        publish: [good: 1]
        do: next1
  fix:
    action: core.echo
    input: {message: "<% ctx(err) %>"}
    next:
      - publish: [fixed: yes]
  next1:
    action: core.echo
    input: {message: next1}
  b:
    action: core.echo
    input: {message: b}
    next:
      - publish: [bpub: 1]
        do: b2
  b2:
    action: core.echo
    input: {message: b2}
    next:
      - when: <% succeeded() %>
        publish: [b2pub: 1]
        do: b3
  b3:
    action: core.echo
    input: {message: b3}
output:
  - err: <% ctx().get(err, none) %>
  - fixed: <% ctx().get(fixed, none) %>
  - bpub: <% ctx().get(bpub, none) %>
  - b2pub: <% ctx().get(b2pub, none) %>
"""

RETRY_WHILE_FAILING = """
version: 1.0
tasks:
  a:
    action: core.echo
    input: {message: a}
  r:
    action: core.echo
    input: {message: r}
    retry:
      count: 2
    next:
      - publish: [rr: <% result() %>]
output:
  - rr: <% ctx().get(rr, none) %>
"""

FAIL_WITH_CLEANUP_ITEMS = """
version: 1.0
vars:
  - xs: [1, 2, 3]
tasks:
  a:
    action: core.echo
    input: {message: a}
    next:
      - when: <% failed() %>
        publish: [why: <% result() %>]
        do: [cleanup, fail]
  cleanup:
    with:
      items: x in <% ctx(xs) %>
      concurrency: 1
    action: core.echo
    input: {message: "<% item(x) %>"}
    retry:
      count: 1
    next:
      - publish: [cl: <% result() %>]
        do: after
  after:
    action: core.echo
    input: {message: after}
output:
  - why: <% ctx().get(why, none) %>
  - cl: <% ctx().get(cl, none) %>
"""

UNREACHABLE_JOIN_WHILE_FAILING = """
version: 1.0
tasks:
  t1:
    action: core.echo
    input: {message: t1}
    next:
      - do: [t2, t4, t5]
  t2:
    action: core.echo
    input: {message: t2}
    next:
      - do: t3
  t3:
    action: core.echo
    input: {message: t3}
    next:
      - do: j
  t4:
    action: core.echo
    input: {message: t4}
    next:
      - do: j
  t5:
    action: core.echo
    input: {message: t5}
  j:
    join: all
    action: core.echo
    input: {message: j}
"""

JOIN_SIBLING_TRANSITIONS = """
version: 1.0
tasks:
  t:
    action: core.echo
    input: {message: t}
    next:
      - publish: [x: 1]
        do: j
      - publish: [y: 2]
        do: j
  j:
    join: all
    action: core.echo
    input: {message: "<% ctx().get(x, none) %> <% ctx().get(y, none) %>"}
output:
  - x: <% ctx().get(x, none) %>
  - y: <% ctx().get(y, none) %>
"""

JOIN_2_TWO_TRANSITIONS_SAME_TASK = """
version: 1.0
tasks:
  t:
    action: core.echo
    input: {message: t}
    next:
      - publish: [x: 1]
        do: j
      - publish: [y: 2]
        do: j
  u:
    action: core.echo
    input: {message: u}
    next:
      - publish: [z: 3]
        do: j
  j:
    join: 2
    action: core.echo
    input: {message: "<% ctx().get(x, none) %> <% ctx().get(y, none) %> <% ctx().get(z, none) %>"}
output:
  - x: <% ctx().get(x, none) %>
"""

JOIN_ALL_TWO_TRANSITIONS_ONE_NOT_TAKEN = """
version: 1.0
tasks:
  t:
    action: core.echo
    input: {message: t}
    next:
      - when: <% succeeded() %>
        publish: [x: 1]
        do: j
      - when: <% failed() %>
        publish: [y: 2]
        do: j
  u:
    action: core.echo
    input: {message: u}
    next:
      - publish: [z: 3]
        do: j
  j:
    join: all
    action: core.echo
    input: {message: "<% ctx().get(x, none) %> <% ctx().get(y, none) %> <% ctx().get(z, none) %>"}
output:
  - x: <% ctx().get(x, none) %>
"""

ITEMS_CONC2 = """
version: 1.0
vars:
  - xs: [x1, x2, x3]
  - tag: init
tasks:
  pre:
    action: core.echo
    input: {message: pre}
    next:
      - publish: [tag: pre]
        do: it
  it:
    with:
      items: v in <% ctx(xs) %>
      concurrency: 2
    action: core.echo
    input: {message: "<% item(v) %>-<% ctx(tag) %>"}
    next:
      - when: <% succeeded() %>
        publish: [res: <% result() %>]
        do: after
      - when: <% failed() %>
        publish: [bad: <% result() %>]
        do: cleanup
  after:
    action: core.echo
    input: {message: "<% ctx(res) %>"}
  cleanup:
    action: core.echo
    input: {message: "<% ctx(bad) %>"}
output:
  - res: <% ctx().get(res, none) %>
  - bad: <% ctx().get(bad, none) %>
"""

ITEMS_WHILE_OTHER_BRANCH_FAILS = """
version: 1.0
vars:
  - xs: [x1, x2, x3, x4]
tasks:
  it:
    with:
      items: v in <% ctx(xs) %>
      concurrency: 2
    action: core.echo
    input: {message: "<% item(v) %>"}
    next:
      - publish: [res: <% result() %>]
  other:
    action: core.echo
    input: {message: other}
output:
  - res: <% ctx().get(res, none) %>
"""

ITEMS_CONC1_FAIL = """
version: 1.0
vars:
  - xs: [x1, x2, x3]
tasks:
  it:
    with:
      items: v in <% ctx(xs) %>
      concurrency: 1
    action: core.echo
    input: {message: "<% item(v) %>"}
    next:
      - when: <% failed() %>
        publish: [bad: <% result() %>]
        do: cleanup
  cleanup:
    action: core.echo
    input: {message: "<% ctx(bad) %>"}
output:
  - bad: <% ctx().get(bad, none) %>
"""

INLINE_PUBLISH = """
version: 1.0
tasks:
  a:
    action: core.echo
    input: {message: a}
    next:
      - publish: n=1 flag=true word=hello q="quoted" l=[1,2] nothing=null
        do: b
  b:
    action: core.echo
    input: {message: "<% ctx().get(n, none) %>"}
output:
  - n: <% ctx().get(n, none) %>
  - flag: <% ctx().get(flag, none) %>
  - word: <% ctx().get(word, none) %>
  - q: <% ctx().get(q, none) %>
  - l: <% ctx().get(l, none) %>
  - nothing: <% ctx().get(nothing, missing) %>
"""

SIBLINGS_VERBATIM = """
version: 1.0
vars:
  - a: zero
tasks:
  t:
    action: core.echo
    input: {message: t}
    next:
      - publish: a=one
        do: x
      - publish: b=<% ctx(a) %>
        do: y
  x:
    action: core.echo
    input:
      message: <% ctx(a) %> <% ctx().containsKey(b) %>
  y:
    action: core.echo
    input:
      message: <% ctx(a) %> <% ctx(b) %>
"""

INLINE_ACTION = """
version: 1.0
vars:
  - x: ex
tasks:
  a:
    action: 'core.echo message="<% ctx(x) %>" n=1 b=True word=hello l=[1,"a"] f=-1.5 j=''{"k": 1}'''
    input: {ignored: 1}
"""

JOIN_2 = """
version: 1.0
vars:
  - x: initial
  - y: initial
tasks:
  start:
    next:
      - do: [a, b, c]
  a:
    action: core.echo
    input: {message: a}
    next:
      - publish: [x: from_a, y: from_a]
        do: j
  b:
    action: core.echo
    input: {message: b}
    next:
      - publish: [x: from_b, cfg: {b: 2}]
        do: b2
  b2:
    action: core.echo
    input: {message: b2}
    next:
      - do: j
  c:
    action: core.echo
    input: {message: c}
    next:
      - publish: [y: from_c, cfg: {c: 3}]
        do: j
  j:
    join: 2
    action: core.echo
    input: {message: "<% ctx(x) %> <% ctx(y) %> <% ctx().get(cfg, none) %>"}
    next:
      - publish: [jx: <% ctx(x) %>]
output:
  - x: <% ctx(x) %>
  - y: <% ctx(y) %>
  - cfg: <% ctx().get(cfg, none) %>
  - jx: <% ctx().get(jx, none) %>
"""

JOIN_1 = """
version: 1.0
vars:
  - x: initial
  - y: initial
tasks:
  start:
    next:
      - do: [a, b, c]
  a:
    action: core.echo
    input: {message: a}
    next:
      - publish: [x: from_a, y: from_a]
        do: j
  b:
    action: core.echo
    input: {message: b}
    next:
      - publish: [x: from_b, cfg: {b: 2}]
        do: b2
  b2:
    action: core.echo
    input: {message: b2}
    next:
      - do: j
  c:
    action: core.echo
    input: {message: c}
    next:
      - publish: [y: from_c, cfg: {c: 3}]
        do: j
  j:
    join: 1
    action: core.echo
    input: {message: "<% ctx(x) %> <% ctx(y) %> <% ctx().get(cfg, none) %>"}
    next:
      - publish: [jx: <% ctx(x) %>]
output:
  - x: <% ctx(x) %>
  - y: <% ctx(y) %>
  - cfg: <% ctx().get(cfg, none) %>
  - jx: <% ctx().get(jx, none) %>
"""

PARALLEL_JOIN = """
version: 1.0
tasks:
  start:
    next:
      - do: [left, right, middle]
  left:
    action: core.noop
    next: [{do: all_joined}, {do: two_joined}]
  right:
    action: core.noop
    next: [{do: all_joined}, {do: two_joined}]
  middle:
    action: core.local cmd="sleep 0.2"
    next: [{do: all_joined}, {do: two_joined}]
  all_joined:
    join: all
    action: core.noop
  two_joined:
    join: 2
    action: core.noop
"""

LOOP_THROUGH_JOIN = """
version: 1.0
vars:
  - n: 0
tasks:
  init:
    action: core.echo
    input: {message: init}
    next:
      - do: [a, b]
  a:
    action: core.echo
    input: {message: "a<% ctx(n) %>"}
    next:
      - do: j
  b:
    action: core.echo
    input: {message: "b<% ctx(n) %>"}
    next:
      - do: j
  j:
    join: all
    action: core.echo
    input: {message: "j<% ctx(n) %>"}
    next:
      - when: <% ctx(n) < 2 %>
        publish: [n: <% ctx(n) + 1 %>]
        do: [a, b]
output:
  - n: <% ctx(n) %>
"""

JOIN1_STILL_RUNNING = """
version: 1.0
tasks:
  start:
    next:
      - do: [a, b]
  a:
    action: core.echo
    input: {message: a}
    next:
      - publish: [x: a]
        do: j
  b:
    action: core.echo
    input: {message: b}
    next:
      - publish: [x: b]
        do: j
  j:
    join: 1
    action: core.echo
    input: {message: "<% ctx(x) %>"}
    next:
      - publish: [jx: <% ctx(x) %>, jr: <% result() %>]
        do: k
  k:
    action: core.echo
    input: {message: "k <% ctx(jx) %>"}
output:
  - jx: <% ctx().get(jx, none) %>
  - jr: <% ctx().get(jr, none) %>
"""

#: (finding, scenario, workflow, steps, what orquesta 1.6.0 made of it)
SCENARIOS: list[tuple[str, str, str, list[list[Any]], dict[str, Any]]] = [
    ('F1', 'terminal_on_failure#0', TERMINAL_ON_FAILURE,
     [['pa', 'succeeded', '$input'], ['pb', 'succeeded', '$input'], ['b', 'failed', {'e': 1}],
      ['a', 'succeeded', '$input']],
     {'status': 'failed',
      'output': {'from_a': 1, 'from_b': 1},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['pa', None, {'message': 'pa'}],
               ['pb', None, {'message': 'pb'}]],
      'errors': ['Execution failed. See result for details.']}),
    ('F1', 'terminal_on_failure#1', TERMINAL_ON_FAILURE,
     [['pa', 'succeeded', '$input'], ['pb', 'succeeded', '$input'], ['a', 'failed', {'e': 1}],
      ['b', 'succeeded', '$input']],
     {'status': 'failed',
      'output': {'from_a': 1, 'from_b': 1},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['pa', None, {'message': 'pa'}],
               ['pb', None, {'message': 'pb'}]],
      'errors': ['Execution failed. See result for details.']}),
    ('F1', 'terminal_on_failure#2', TERMINAL_ON_FAILURE,
     [['pa', 'succeeded', '$input'], ['pb', 'succeeded', '$input'], ['b', 'failed', {'e': 1}],
      ['a', 'failed', {'e': 2}]],
     {'status': 'failed',
      'output': {'from_a': 1, 'from_b': 1},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['pa', None, {'message': 'pa'}],
               ['pb', None, {'message': 'pb'}]],
      'errors': ['Execution failed. See result for details.', 'Execution failed. See result for details.']}),
    ('F1', 'remediation#2', REMEDIATION,
     [['b', 'succeeded', '$input'], ['b2', 'failed', {'e': 'b2'}], ['a', 'failed', {'e': 'boom'}],
      ['fix', 'succeeded', '$input']],
     {'status': 'failed',
      'output': {'err': 'none', 'fixed': 'none', 'bpub': 1, 'b2pub': 'none'},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['b2', None, {'message': 'b2'}]],
      'errors': ['Execution failed. See result for details.', 'Execution failed. See result for details.'],
      'skipped': ['fix']}),
    ('F1', 'retry_while_failing', RETRY_WHILE_FAILING,
     [['a', 'failed', {'e': 1}], ['r', 'failed', {'e': 2}]],
     {'status': 'failed',
      'output': {'rr': {'e': 2}},
      'runs': [['a', None, {'message': 'a'}], ['r', None, {'message': 'r'}]],
      'errors': ['Execution failed. See result for details.', 'Execution failed. See result for details.']}),
    ('F1', 'fail_with_cleanup_items', FAIL_WITH_CLEANUP_ITEMS,
     [['a', 'failed', {'e': 1}], ['cleanup[0]', 'failed', {'e': 0}]],
     {'status': 'failed',
      'output': {'why': {'e': 1}, 'cl': 'none'},
      'runs': [['a', None, {'message': 'a'}], ['cleanup', 0, {'message': 1}]],
      'errors': ['Execution failed. See result for details.', 'Execution failed. See result for details.',
                 'Execution failed. See result for details.']}),
    ('F1', 'unreachable_join_while_failing', UNREACHABLE_JOIN_WHILE_FAILING,
     [['t1', 'succeeded', '$input'], ['t4', 'succeeded', '$input'], ['t5', 'failed', {'e': 1}],
      ['t2', 'succeeded', '$input']],
     {'status': 'failed',
      'output': None,
      'runs': [['t1', None, {'message': 't1'}], ['t2', None, {'message': 't2'}], ['t4', None, {'message': 't4'}],
               ['t5', None, {'message': 't5'}]],
      'errors': ['Execution failed. See result for details.']}),
    ('F2', 'join_sibling_transitions#0', JOIN_SIBLING_TRANSITIONS,
     [['t', 'succeeded', '$input'], ['j', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': {'x': 1, 'y': 2},
      'runs': [['j', None, {'message': '1 2'}], ['t', None, {'message': 't'}]]}),
    ('F2', 'join_2_two_transitions_same_task', JOIN_2_TWO_TRANSITIONS_SAME_TASK,
     [['t', 'succeeded', '$input'], ['u', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': {'x': 1},
      'runs': [['j', None, {'message': '1 2 3'}], ['t', None, {'message': 't'}], ['u', None, {'message': 'u'}]]}),
    ('F2', 'join_all_two_transitions_one_not_taken', JOIN_ALL_TWO_TRANSITIONS_ONE_NOT_TAKEN,
     [['t', 'succeeded', '$input'], ['u', 'succeeded', '$input'], ['j', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': {'x': 1},
      'runs': [['j', None, {'message': '1 none 3'}], ['t', None, {'message': 't'}],
               ['u', None, {'message': 'u'}]]}),
    ('F3', 'items_conc2#1', ITEMS_CONC2,
     [['pre', 'succeeded', '$input'], ['it[1]', 'failed', {'e': 1}], ['it[0]', 'succeeded', 'r0'],
      ['it[2]', 'succeeded', 'r2']],
     {'status': 'succeeded',
      'output': {'res': 'none', 'bad': ['r0', {'e': 1}, 'r2']},
      'runs': [['cleanup', None, {'message': ['r0', {'e': 1}, 'r2']}], ['it', 0, {'message': 'x1-pre'}],
               ['it', 1, {'message': 'x2-pre'}], ['it', 2, {'message': 'x3-pre'}],
               ['pre', None, {'message': 'pre'}]]}),
    ('F3', 'items_conc2#2', ITEMS_CONC2,
     [['pre', 'succeeded', '$input'], ['it[0]', 'failed', {'e': 0}]],
     {'status': 'succeeded',
      'output': {'res': 'none', 'bad': [{'e': 0}, {'message': 'x2-pre'}, {'message': 'x3-pre'}]},
      'runs': [['cleanup', None, {'message': [{'e': 0}, {'message': 'x2-pre'}, {'message': 'x3-pre'}]}],
               ['it', 0, {'message': 'x1-pre'}], ['it', 1, {'message': 'x2-pre'}],
               ['it', 2, {'message': 'x3-pre'}], ['pre', None, {'message': 'pre'}]]}),
    ('F3', 'items_while_other_branch_fails', ITEMS_WHILE_OTHER_BRANCH_FAILS,
     [['other', 'failed', {'e': 1}], ['it[0]', 'succeeded', 'r0'], ['it[1]', 'succeeded', 'r1']],
     {'status': 'failed',
      'output': {'res': 'none'},
      'runs': [['it', 0, {'message': 'x1'}], ['it', 1, {'message': 'x2'}],
               ['other', None, {'message': 'other'}]],
      'errors': ['Execution failed. See result for details.']}),
    ('F3', 'items_conc1_fail', ITEMS_CONC1_FAIL,
     [['it[0]', 'failed', {'e': 1}]],
     {'status': 'succeeded',
      'output': {'bad': [{'e': 1}, None, None]},
      'runs': [['cleanup', None, {'message': [{'e': 1}, None, None]}], ['it', 0, {'message': 'x1'}]]}),
    ('F4', 'inline_publish#0', INLINE_PUBLISH,
     [['a', 'succeeded', '$input'], ['b', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': {'n': 1, 'flag': True, 'word': 'none', 'q': 'quoted', 'l': [1, 2], 'nothing': None},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 1}]]}),
    ('F4', 'squall_test_SIBLINGS_verbatim', SIBLINGS_VERBATIM,
     [['t', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': None,
      'runs': [['t', None, {'message': 't'}], ['x', None, {'message': 'zero False'}],
               ['y', None, {'message': 'zero zero'}]]}),
    ('F4', 'inline_action', INLINE_ACTION,
     [['a', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': None,
      'runs': [['a', None, {'message': 'ex', 'n': 1, 'b': True, 'l': '[1,"a"]', 'f': -1.5, 'j': {'k': 1}}]]}),
    ('F5', 'join_2#0', JOIN_2,
     [['a', 'succeeded', '$input'], ['b', 'succeeded', '$input'], ['b2', 'succeeded', '$input'],
      ['c', 'succeeded', '$input'], ['j', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': {'x': 'from_b', 'y': 'from_a', 'cfg': {'b': 2}, 'jx': 'from_b'},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['b2', None, {'message': 'b2'}],
               ['c', None, {'message': 'c'}], ['j', None, {'message': "from_b from_a {'b': 2}"}],
               ['j', None, {'message': "initial from_c {'c': 3}"}]]}),
    ('F5', 'join_2#4', JOIN_2,
     [['c', 'succeeded', '$input'], ['a', 'succeeded', '$input'], ['b', 'succeeded', '$input'],
      ['b2', 'succeeded', '$input'], ['j', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': {'x': 'from_a', 'y': 'from_a', 'cfg': {'c': 3}, 'jx': 'from_a'},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['b2', None, {'message': 'b2'}],
               ['c', None, {'message': 'c'}], ['j', None, {'message': "from_a from_a {'c': 3}"}],
               ['j', None, {'message': "from_b initial {'b': 2}"}]]}),
    ('F5', 'join_1#0', JOIN_1,
     [['a', 'succeeded', '$input'], ['j', 'succeeded', '$input'], ['b', 'succeeded', '$input'],
      ['b2', 'succeeded', '$input'], ['c', 'succeeded', '$input']],
     {'status': 'succeeded',
      'output': {'x': 'from_b', 'y': 'from_a', 'cfg': {'b': 2}, 'jx': 'from_b'},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['b2', None, {'message': 'b2'}],
               ['c', None, {'message': 'c'}], ['j', None, {'message': "from_b initial {'b': 2}"}],
               ['j', None, {'message': "initial from_c {'c': 3}"}],
               ['j', None, {'message': 'from_a from_a none'}]]}),
    ('F5', 'parallel_join#0', PARALLEL_JOIN,
     [['left', 'succeeded', None], ['right', 'succeeded', None], ['two_joined', 'succeeded', None],
      ['middle', 'succeeded', None]],
     {'status': 'succeeded',
      'output': None,
      'runs': [['all_joined', None, {}], ['left', None, {}], ['middle', None, {'cmd': 'sleep 0.2'}],
               ['right', None, {}], ['two_joined', None, {}], ['two_joined', None, {}]]}),
    ('F5', 'loop_through_join', LOOP_THROUGH_JOIN,
     [],
     {'status': 'succeeded',
      'output': {'n': 2},
      'runs': [['a', None, {'message': 'a0'}], ['a', None, {'message': 'a1'}], ['a', None, {'message': 'a2'}],
               ['b', None, {'message': 'b0'}], ['b', None, {'message': 'b1'}], ['b', None, {'message': 'b2'}],
               ['init', None, {'message': 'init'}], ['j', None, {'message': 'j0'}],
               ['j', None, {'message': 'j1'}], ['j', None, {'message': 'j2'}]]}),
    ('F5', 'join1_still_running', JOIN1_STILL_RUNNING,
     [['a', 'succeeded', '$input'], ['b', 'succeeded', '$input'], ['j', 'succeeded', 'first-done']],
     {'status': 'succeeded',
      'output': {'jx': 'a', 'jr': 'first-done'},
      'runs': [['a', None, {'message': 'a'}], ['b', None, {'message': 'b'}], ['j', None, {'message': 'a'}],
               ['j', None, {'message': 'b'}], ['k', None, {'message': 'k a'}]]}),
]


@pytest.mark.parametrize(("finding", "name", "text", "steps", "expected"), SCENARIOS,
                         ids=[f"{s[0]}-{s[1]}" for s in SCENARIOS])
def test_the_conductor_ends_as_real_orquesta_does(tmp_path: Path, finding: str, name: str, text: str,
                                                  steps: list[list[Any]], expected: dict[str, Any]) -> None:
    assert drive(tmp_path, text, steps) == expected


@pytest.mark.parametrize(("text", "pairs"), [
    ('n=1 flag=true word=hello q="quoted" l=[1,2] nothing=null',
     [("n", 1), ("flag", True), ("q", "quoted"), ("l", [1, 2]), ("nothing", None)]),
    ("""a=<% ctx(x) %> b={{ ctx('y') }} c='1' d=-1.5 e=TRUE j='{"k": 1}' m=[1,"a"]""",
     [("a", "<% ctx(x) %>"), ("b", "{{ ctx('y') }}"), ("c", "1"), ("d", -1.5), ("e", True), ("j", {"k": 1}),
      ("m", '[1,"a"]')]),
    ("x=from_a", []),
    ("x=1 x=2", [("x", 1), ("x", 2)]),
])
def test_inline_parameters_parse_as_orquesta_parses_them(text: str, pairs: list[tuple[str, Any]]) -> None:
    """Values as orquesta 1.6.0's `parse_inline_params` returns them for the same text."""
    assert parse_inline_params(text) == pairs


def test_an_action_whose_inline_words_are_no_parameters_is_refused_at_load(tmp_path: Path) -> None:
    """As orquesta's TaskSpec, with no inline parameter parsed the whole text would be the action ref,
    and StackStorm fails that task at run time for a missing action `core.echo message=hello`; Squall says
    so when the pack loads, naming the fix. A quoted value is a parameter."""
    with pytest.raises(ContentInvalid, match=r"task 'a': action 'core.echo message=hello': no inline parameter .* "
                                        r"quote text values \(who=\"one\"\)"):
        load_spec("orquesta", write(tmp_path / "w.yaml", """
version: 1.0
tasks:
  a:
    action: core.echo message=hello
"""), "w.yaml")
    spec = load_spec("orquesta", write(tmp_path / "w.yaml", """
version: 1.0
tasks:
  a:
    action: core.echo message="hello"
"""), "w.yaml")
    assert (spec.tasks["a"].action, spec.tasks["a"].input) == ("core.echo", {"message": "hello"})
