"""`help` for the person asking (issue 20): only what they may run in that channel, by pack, with
each alias's formats; the hidden count for admins; `help COMMAND` with parameters and who may run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.base import Capabilities, Message
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat import help as chat_help
from bot.chat.auth import Authorizer
from bot.chat.bot import ChatBot
from engine.config import load_config
from tests.conftest import write
from tests.test_chat import loopback_chat, settle


def ops_pack(home: Path, chat: str = "") -> None:
    """Config with admins and an operators group, and a pack `ops`: `restart` for everyone, `wipe`
    for operators only."""
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        auth:
          admins: [root-admin]
          groups:
            operators: [olivia]
        {chat}
    """)
    pack = home / "packs" / "ops"
    write(pack / "pack.yaml", "ref: ops\nname: ops\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "restart.yaml", """
        name: restart
        runner_type: local-shell-cmd
        parameters:
          service: {type: string, required: true, description: The service to restart}
          host: {type: string, default: web1, description: Where it runs}
          cmd: {default: 'echo "restarting {{service}} on {{host}}"', immutable: true}
    """)
    write(pack / "aliases" / "restart.yaml", """
        name: restart
        action_ref: ops.restart
        description: Restart a service on a host.
        formats:
          - "restart {{service}} on {{host}}"
          - display: "restart <service>"
            representation: ["restart {{service}}"]
        result:
          format: "{{ execution.result.stdout }}"
    """)
    write(pack / "actions" / "wipe.yaml", """
        name: wipe
        runner_type: local-shell-cmd
        parameters:
          disk: {type: string, required: true, description: The disk to wipe}
          cmd: {default: 'echo "wiped {{disk}}"', immutable: true}
    """)
    write(pack / "aliases" / "wipe.yaml", """
        name: wipe
        action_ref: ops.wipe
        description: Wipe a disk clean.
        formats: ["wipe disk {{disk}}"]
        permissions:
          allow:
            groups: [operators]
    """)


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    ops_pack(home)
    async with loopback_chat(home) as started:
        yield started


async def ask(chat, text: str, user: str, channel: str = "#ops") -> str:
    """Everything the bot answered to one message, joined."""
    squall, bot, loopback = chat
    before = len(loopback.posted)
    await loopback.say(text, user=user, channel=channel)
    await settle(squall, bot)
    return "\n".join(p.text for p in loopback.posted[before:])


async def test_help_shows_each_person_what_they_may_run_by_pack(chat) -> None:
    bob = await ask(chat, "!help", "bob")
    olivia = await ask(chat, "!help", "olivia")
    assert "ops:\n  !restart <service>\n" not in bob  # formats are listed under their alias, first first
    assert "ops:\n  !restart {{service}} on {{host}} — Restart a service on a host.\n      !restart <service>" in bob
    assert bob.index("ops:") < bob.index("squall:")  # grouped by pack, packs in order
    assert "wipe disk" not in bob and "!run {{cmd}}" not in bob
    assert "!wipe disk {{disk}} — Wipe a disk clean." in olivia and "!run {{cmd}}" in olivia
    assert "hidden" not in bob and "hidden" not in olivia  # only admins hear about hidden commands


async def test_admins_see_how_many_commands_ordinary_people_do_not(chat) -> None:
    admin = await ask(chat, "!help", "root-admin")
    assert "!wipe disk {{disk}}" in admin
    # ops.wipe, squall.run, squall.http, squall.key_set and squall.pack_install (operators or the console)
    assert "(admin) 5 commands here are hidden" in admin
    in_console = await ask(chat, "!help", "root-admin", channel="console")  # a channel named console
    assert "(admin) 5 commands here are hidden" in in_console  # is not the terminal


async def test_in_the_terminal_only_what_needs_a_group_is_hidden(home: Path) -> None:
    ops_pack(home)
    async with loopback_chat(home, name="console") as console:
        in_console = await ask(console, "!help", "root-admin", channel="console")
    assert "(admin) 1 command here is hidden" in in_console  # the console may run the squall ones: wipe


async def test_help_command_shows_parameters_formats_and_who_may_run_it(chat) -> None:
    for query in ("restart", "ops.restart", "restart nginx"):
        answer = await ask(chat, f"!help {query}", "bob")
        assert answer.startswith("ops.restart → ops.restart: Restart a service on a host."), query
        assert "  service (string, required) — The service to restart" in answer
        assert "  host (string, default web1) — Where it runs" in answer
        assert "cmd" not in answer  # immutable: no one may set it from chat
        assert "  !restart {{service}} on {{host}}" in answer and "  !restart {{service}}" in answer
        assert "who may run it: everyone" in answer
    wipe = await ask(chat, "!help wipe", "olivia")
    assert "  disk (string, required) — The disk to wipe" in wipe
    assert "who may run it: only groups operators; admins always" in wipe
    assert await ask(chat, "!help wipe", "bob") == "No commands match `wipe`."  # bob may not: not shown


async def test_long_help_is_split_by_pack_instead_of_attached(home: Path) -> None:
    ops_pack(home)
    small = LoopbackAdapter(capabilities=Capabilities(threads=True, files=True, max_length=400))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[small])
    await squall.chat.start()
    try:
        await small.say("!help", user="root-admin")
        await settle(squall, squall.chat)
        replies = [p.reply for p in small.posted]
        assert len(replies) > 1 and all(r.file is None and len(r.text) <= 400 for r in replies)
        whole = "\n".join(r.text for r in replies)
        assert whole.startswith("ops:") and "\nsquall:\n" in whole and "(admin) 5 commands" in replies[-1].text
    finally:
        await squall.chat.stop()
        await squall.close()


def hidden_pack(home: Path) -> None:
    """Pack `demo`: `backdoor` has a representation-only format (StackStorm's way to keep a command
    out of help), `login` has a secret parameter whose default its formats spell out."""
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          key: {type: string}
          cmd: {default: 'echo hello {{who}}', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.greet
        description: Greet.
        formats: ["greet {{who}}"]
    """)
    write(pack / "aliases" / "backdoor.yaml", """
        name: backdoor
        action_ref: demo.greet
        description: undocumented maintenance command
        formats:
          - representation: ["maint-xyzzy {{who}} {{key=internal-k3y-777}}"]
    """)
    write(pack / "actions" / "login.yaml", """
        name: login
        runner_type: local-shell-cmd
        parameters:
          user: {type: string, required: true}
          token: {type: string, secret: true, default: "svc-Tok3n-999"}
          realm: {type: string, default: corp}
          cmd: {default: 'echo ok', immutable: true}
    """)
    write(pack / "aliases" / "login.yaml", """
        name: login
        action_ref: demo.login
        description: Log in.
        formats:
          - display: "login <user>"
            representation: ["login {{user}} {{token=svc-Tok3n-999}}"]
          - "sign in {{user}} {{ token = \\"svc-Tok3n-999\\" }} {{realm=corp}}"
          - representation: ["relogin {{user}} {{realm=hidden-realm-42}}"]
    """)


async def test_help_lists_only_display_strings_and_never_a_secret_default(home: Path) -> None:
    """StackStorm's help (and `AliasMatcher.help`) lists only formats with a display; a secret
    parameter's default must not reach the channel through a format either."""
    ops_pack(home)
    hidden_pack(home)
    async with loopback_chat(home) as started:
        listed = await ask(started, "!help", "bob")
        login = await ask(started, "!help demo.login", "bob")
        by_words = await ask(started, "!help maint-xyzzy", "bob")
        backdoor = await ask(started, "!help demo.backdoor", "bob")
        typo = await ask(started, "!maint-xyzy bob", "bob")  # near a hidden format only
        near = await ask(started, "!please login bob", "bob")  # filled from `login {{user}} {{token=...}}`
    assert "  !greet {{who}} — Greet." in listed
    assert "svc-Tok3n-999" not in listed  # the plain-string format `sign in ...` is listed, its default masked
    assert "maint-xyzzy" not in typo and "internal-k3y-777" not in typo  # "did you mean" shows no hidden format
    assert near.startswith("Did you mean `!login bob`?")  # the secret default is not spelled; matching applies it
    assert "maint-xyzzy" not in listed and "internal-k3y-777" not in listed and "backdoor" not in listed
    assert "relogin" not in listed and "hidden-realm-42" not in listed
    assert "  !login <user> — Log in." in listed
    assert "svc-Tok3n-999" not in login  # nor in the formats: not `{{token=svc-Tok3n-999}}`
    assert "  token (secret string, default ********; " in login  # marked secret (item 1 of the review)
    assert "  !login <user>\n  !login {{user}} {{token=********}}\n" in login
    assert '  !sign in {{user}} {{ token = "********" }} {{realm=corp}}' in login  # others as written
    assert "relogin" not in login and "hidden-realm-42" not in login  # its hidden format is left out
    assert by_words == "No commands match `maint-xyzzy`."  # not found by the words of its hidden format
    assert backdoor.startswith("demo.backdoor → demo.greet")  # by ref the alias itself is still described,
    assert "  (none listed in help)" in backdoor and "internal-k3y-777" not in backdoor  # not its format


async def test_listing_masks_secret_defaults_in_displays_given_the_actions(home: Path) -> None:
    """A plain-string format is its own display: given the actions, the listing masks a secret
    parameter's default in it (and leaves other defaults as written)."""
    ops_pack(home)
    hidden_pack(home)
    async with loopback_chat(home) as (_squall, bot, _adapter):
        login = next(a for a in bot.index.matcher.aliases if a.ref == "demo.login")
        text = "\n".join(chat_help.listing([login], "!", None, bot.engine.registry.actions))
        unknown = chat_help.details(login, None, "!", "everyone")
    assert "      !sign in {{user}} {{ token = \"********\" }} {{realm=corp}}" in text
    assert "svc-Tok3n-999" not in text
    assert "svc-Tok3n-999" not in unknown and "corp" not in unknown.split("parameters:")[0]  # no schema: all masked


async def test_help_shows_a_runner_parameter_a_format_names(chat) -> None:
    """`run {{cmd}}` names core.local's runner parameter `cmd`: a person sets it by typing the format (a
    form asks for it), so `help run` lists it; the runner parameters no format names nor
    `allow_overrides` opens (`cwd`, `env`, `timeout`) stay out, as a chat command may not set them."""
    answer = await ask(chat, "!help run", "olivia")
    parameters = answer.split("parameters:\n")[1].split("\nwho may run it:")[0]
    assert parameters.startswith("  cmd (string, required)"), parameters
    assert "(none)" not in parameters
    assert not any(f"  {name} (" in parameters for name in ("cwd", "env", "timeout", "sudo"))


async def test_help_lists_the_parameters_a_form_asks_for(chat) -> None:
    """For every loaded alias, `help` names the same parameters its form asks (one rule for both: what a
    chat command may set), so help never says "(none)" of a command that asks for values."""
    _squall, bot, _adapter = chat
    actions = bot.engine.registry.actions
    for alias in bot.index.matcher.aliases:
        action = actions.get(alias.action_ref)
        helped = {line.split()[0] for line in chat_help.parameter_lines(alias, action)}
        asked = {field.name for field in bot.dispatcher.forms.fields(alias)}
        assert helped == asked, alias.ref


def deploy_pack(home: Path, count: int = 0) -> None:
    """Pack `rel`: `deploy` with a required secret token, a tags array and defaults of every JSON kind;
    plus `count` more aliases (`job0`, `job1`…) to make a listing long."""
    pack = home / "packs" / "rel"
    write(pack / "pack.yaml", "ref: rel\nname: rel\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "deploy.yaml", """
        name: deploy
        runner_type: local-shell-cmd
        parameters:
          host: {type: string, required: true}
          token: {type: string, secret: true, required: true, description: deploy token}
          verbose: {type: boolean, default: false}
          dry: {type: boolean, default: true}
          ticket: {type: string, default: null}
          tags: {type: array, items: {type: string}, default: [a, b]}
          extra: {type: object, default: {k: 1}}
          mode: {type: [boolean, string], enum: [true, false, auto]}
          cmd: {default: 'echo deploy', immutable: true}
    """)
    write(pack / "aliases" / "deploy.yaml", """
        name: deploy
        action_ref: rel.deploy
        description: Deploy.
        formats: ["deploy {{host}}"]
    """)
    for n in range(count):
        write(pack / "aliases" / f"job{n}.yaml", f"""
            name: job{n}
            action_ref: rel.deploy
            description: Job {n}.
            formats: ["job{n} {{{{host}}}}"]
        """)


async def test_help_marks_a_secret_parameter_and_where_to_give_it(home: Path) -> None:
    """A secret typed in a channel runs (masked in replies), but everyone there has read it: help says
    so on the parameter, and names the ways that keep it private (a direct message, the form)."""
    ops_pack(home)
    deploy_pack(home)
    async with loopback_chat(home) as started:
        answer = await ask(started, "!help deploy", "bob")
    token = next(line for line in answer.split("\n") if line.startswith("  token ("))
    assert token.startswith("  token (secret string, required; typed in a channel, everyone there reads it"), token
    assert "direct message" in token and "`!run-form rel.deploy`" in token and token.endswith(" — deploy token")
    assert "  host (string, required)\n" in answer  # a plain parameter is not marked


async def test_help_shows_defaults_as_the_pack_author_wrote_them(home: Path) -> None:
    """JSON/YAML spelling (`false`, `true`, `null`, lists and objects as JSON), never Python's repr."""
    ops_pack(home)
    deploy_pack(home)
    async with loopback_chat(home) as started:
        answer = await ask(started, "!help rel.deploy", "bob")
    assert "  verbose (boolean, default false)" in answer
    assert "  dry (boolean, default true)" in answer
    assert "  ticket (string, default null)" in answer
    assert '  tags (array, default ["a", "b"])' in answer
    assert '  extra (object, default {"k": 1})' in answer
    assert "one of true, false, auto" in answer
    assert "False" not in answer and "None" not in answer and "['a'" not in answer


async def test_help_with_a_pack_name_lists_the_commands_of_that_pack_the_asker_may_run(chat) -> None:
    """StackStorm's `help <pack>`: a word naming no command but a pack lists that pack's commands,
    only those the asker may run."""
    bob = await ask(chat, "!help ops", "bob")
    olivia = await ask(chat, "!help ops", "olivia")
    assert "No commands match" not in bob
    # bob may run one command of ops: it is shown in full, as `help <command>` shows it
    assert bob.startswith("ops.restart → ops.restart") and "wipe" not in bob
    assert "!wipe disk {{disk}} — Wipe a disk clean." in olivia and "!restart {{service}}" in olivia
    assert "squall:" not in bob and "!ping" not in bob  # no other pack's
    assert await ask(chat, "!help nosuchpack", "bob") == "No commands match `nosuchpack`."


async def test_a_long_help_says_how_to_narrow_it_and_a_short_one_does_not(home: Path) -> None:
    ops_pack(home)
    deploy_pack(home, count=chat_help.LONG_LISTING)
    async with loopback_chat(home) as started:
        whole = await ask(started, "!help", "bob")
        one_pack = await ask(started, "!help ops", "bob")
    assert "`!help <pack>` lists one pack's commands" in whole
    assert whole.index("built in:") < whole.index("`!help <pack>`")
    assert "`!help <pack>`" not in one_pack  # a pack's list is narrowed already
    _squall, bot, _adapter = started
    restart = [a for a in bot.index.matcher.aliases if a.ref == "ops.restart"]
    assert not any("help <pack>" in block for block in chat_help.listing(restart, "!", None))  # short: no hint


async def test_a_person_learns_how_many_commands_need_permissions_and_whom_to_ask(chat) -> None:
    """Non-admins hear how many commands here they may not run; whom to ask is named only where config
    names admins they can reach on that adapter."""
    _squall, bot, _adapter = chat
    aliases, auth = bot.dispatcher.matcher.aliases, bot.dispatcher.auth
    bob = Message(adapter="loopback", channel="#ops", user="bob", text="!help")
    mine = chat_help.visible(aliases, auth, bob)
    withheld = chat_help.withheld_count(aliases, mine)
    assert withheld == sum(1 for a in aliases if a.enabled and not auth.check(a, bob).allowed) > 0
    admins = chat_help.admin_names(auth, "loopback")
    assert admins == ["root-admin"]
    text = "\n".join(chat_help.listing(mine, "!", None, withheld=withheld, admins=admins))
    assert text.endswith(f"\n{withheld} more commands need permissions you don't have here; ask root-admin.")
    alone = "\n".join(chat_help.listing(mine, "!", None, withheld=1))
    assert alone.endswith("\n1 more command needs permissions you don't have here.")  # no one to name
    only_elsewhere = Authorizer(admins={"slack:U0123ABCD", "irc:alice", "carol"})
    assert chat_help.admin_names(only_elsewhere, "irc") == ["alice", "carol"]
    assert "\nN" not in "\n".join(chat_help.listing(mine, "!", None))  # none withheld: no line


async def test_help_is_one_line_per_pack_where_every_line_costs_the_connection_its_pace(home: Path) -> None:
    """An adapter with no threads and no files that caps results (`max_result_lines`, IRC's) gets a
    summary, one line per pack with `help <pack>` for the rest, when the whole list is longer than
    the cap; an adapter with threads or files, or a list that fits, gets the whole list."""
    ops_pack(home)
    deploy_pack(home, count=30)
    async with loopback_chat(home) as (_squall, bot, _adapter):
        aliases, auth = bot.dispatcher.matcher.aliases, bot.dispatcher.auth
        olivia = Message(adapter="loopback", channel="#ops", user="olivia", text="!help")
        mine = chat_help.visible(aliases, auth, olivia)
        actions = bot.engine.registry.actions
    paced = LoopbackAdapter("irc", Capabilities(threads=False, files=False, max_length=400))
    paced.max_result_lines = 20  # type: ignore[attr-defined]
    whole = chat_help.listing(mine, "!", 3, actions)
    short_ = chat_help.listing(mine, "!", 3, actions, adapter=paced)
    text = "\n".join(short_)
    assert len(text.split("\n")) <= paced.max_result_lines < len("\n".join(whole).split("\n"))  # type: ignore[attr-defined]
    packs = sorted({a.pack for a in mine if chat_help.displays(a)})
    for pack in packs:
        line = next(line for line in text.split("\n") if line.startswith(f"{pack}: "))
        assert "{{" not in line  # names, not formats
    assert "ops: restart, wipe" in text
    assert f"… (+{31 - chat_help.SUMMARY_NAMES})" in next(line for line in text.split("\n") if line.startswith("rel: "))
    assert "`!help <pack>` lists one pack's commands" in text and "built in: !help [command]" in text
    assert short_[-1] == whole[-1]  # the admin's note is kept
    threaded = LoopbackAdapter("slack", Capabilities(threads=True, files=False, max_length=400))
    threaded.max_result_lines = 20  # type: ignore[attr-defined]
    assert chat_help.listing(mine, "!", 3, actions, adapter=threaded) == whole
    roomy = LoopbackAdapter("irc", Capabilities(threads=False, files=False, max_length=400))
    roomy.max_result_lines = 1000  # type: ignore[attr-defined]
    assert chat_help.listing(mine, "!", 3, actions, adapter=roomy) == whole


async def test_a_person_hears_of_the_commands_they_may_not_run_and_whom_to_ask(chat) -> None:
    """Through the dispatcher: a person's `!help` ends with how many commands need permissions they lack
    and the admin to ask; an admin's does not (they get the hidden count instead)."""
    bob = await ask(chat, "!help", "bob")
    assert bob.endswith("more commands need permissions you don't have here; ask root-admin."), bob[-200:]
    assert "more commands need" not in await ask(chat, "!help", "root-admin")


async def test_a_paced_adapter_gets_one_line_per_pack_from_the_dispatcher(home: Path) -> None:
    """Through the dispatcher: an adapter without threads or files whose results are capped (IRC) gets the
    one-line-per-pack summary within its cap, not every format of every command."""
    ops_pack(home)
    deploy_pack(home, count=30)
    paced = LoopbackAdapter("irc", Capabilities(threads=False, files=False, max_length=400))
    paced.max_result_lines = 20
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[paced])
    await squall.chat.start()
    try:
        await paced.say("!help", user="olivia")
        await settle(squall, squall.chat)
        text = "\n".join(p.text for p in paced.posted)
    finally:
        await squall.chat.stop()
        await squall.close()
    assert "rel: deploy, job0" in text and "{{host}}" not in text and len(text.split("\n")) <= 20, text
