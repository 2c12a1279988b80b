"""Issue 25, finding 6: ``--quiet`` hid the warning that ``--host 0.0.0.0`` opens the editor to the
network. It is always said (on stderr); the server itself is never started here."""

from __future__ import annotations

import pytest

from blendedit.cli import main


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_the_open_host_warning_survives_quiet(tiny_sd_dir, tiny_clip_dir, monkeypatch, capsys,
                                              host, warned):  # fmt: skip
    from blendedit.web.app import EditorApp

    def launch(self, *args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl+C right away: nothing binds any address

    monkeypatch.setattr(EditorApp, "launch", launch)
    argv = ["serve", "--model", str(tiny_sd_dir), "--clip-model", str(tiny_clip_dir)]
    argv += ["--device", "cpu", "--offline", "--quiet", "--host", host]
    assert main(argv) == 0
    err = capsys.readouterr().err
    line = f"warning: listening on {host}: anyone who can reach this machine can use the editor"
    assert (line in err) == warned, err
    if warned:
        assert err.count("\n") == 1  # that line alone: --quiet keeps the rest quiet
