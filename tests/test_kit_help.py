"""What a plugin author reads and sees: help() texts and check_adapter's captured output."""

from __future__ import annotations

import logging
import pydoc

from tfopt import hookimpl
from tfopt.plugins import build_plugin_manager
from tfopt.run_cache import PerRun
from tfopt.testing import check_adapter


def test_help_of_per_run_says_how_to_use_it_without_typing_boilerplate():
    text = pydoc.render_doc(PerRun, renderer=pydoc.plaintext)
    assert "One object per run" in text and "_MODELS.get(ctx, key, load)" in text
    assert "typing.Generic" not in text.replace("without typing.Generic's machinery", "")
    assert PerRun[int] is not None  # still subscriptable in annotations


class _ChattyTrace:
    """Logs what torch's tracer logs at DEBUG while exporting."""

    @hookimpl(wrapper=True)
    def export(self, ctx):
        logger = logging.getLogger("torch.fx.experimental.symbolic_shapes")
        level = logger.level
        logger.setLevel(logging.DEBUG)
        try:
            logger.debug("create_symbol s0 = 8 for L['x'].size()[1]")
        finally:
            logger.setLevel(level)  # torch logs at exit through this logger
        return (yield)


def test_check_adapter_keeps_library_log_records_out_of_the_captured_output(fresh_fakes, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    entry = fresh_fakes.entry_point("export_only", fresh_fakes.FAKE_ENTRY_POINTS["export_only"])
    pm = build_plugin_manager(entry_points=[entry])
    pm.register(_ChattyTrace(), name="chatty")
    check_adapter("export_only", pm=pm, work_dir=tmp_path / "quiet")
    assert not [record for record in caplog.records if record.name.startswith("torch")]
    check_adapter("export_only", pm=pm, work_dir=tmp_path / "verbose", verbose=True)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("torch")] == [
        "create_symbol s0 = 8 for L['x'].size()[1]"
    ]
