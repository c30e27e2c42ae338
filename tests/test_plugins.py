"""Plugin discovery and selection: broken plugins, allow-list, blocks, config file, adapter subsets."""

from __future__ import annotations

import pytest

from tfopt import plugins
from tfopt.errors import TfoptError
from tfopt.plugins import (
    adapter_caller,
    adapter_names,
    build_plugin_manager,
    generic_caller,
    list_plugins,
    parse_block_options,
)


def _pm(fakes, *names, **kwargs):
    entry_points = [fakes.entry_point(name, fakes.FAKE_ENTRY_POINTS[name]) for name in names]
    return build_plugin_manager(entry_points=entry_points, **kwargs)


def _by_name(pm):
    return {entry["name"]: entry for entry in list_plugins(pm)}


def test_broken_plugin_is_listed_with_its_error_and_the_others_work(fresh_fakes, run_context):
    pm = _pm(fresh_fakes, "broken", "fake_a")
    listing = _by_name(pm)
    assert listing["broken"]["status"] == "failed"
    assert "ImportError: simulated: this plugin needs a package" in listing["broken"]["error"]
    assert listing["broken"]["hooks"] == [] and not listing["broken"]["is_adapter"]
    assert listing["fake_a"]["status"] == "active" and listing["fake_a"]["error"] is None
    ctx = run_context("fake_a")
    exported = adapter_caller(pm, "fake_a", "export")(ctx=ctx)
    assert exported.model_path.is_file()


def test_selecting_a_broken_plugin_says_why(fresh_fakes):
    pm = _pm(fresh_fakes, "broken", "fake_a")
    with pytest.raises(TfoptError, match=r"plugin 'broken' failed to load \(ImportError: simulated.*installed adapters: fake_a"):
        adapter_caller(pm, "broken", "export")


def test_default_plugin_is_always_registered_and_not_an_adapter(fresh_fakes):
    pm = build_plugin_manager(entry_points=[], environ={plugins.ALLOW_ENV: ""})
    listing = _by_name(pm)
    assert listing["default"]["builtin"] and listing["default"]["status"] == "active"
    assert listing["default"]["hooks"] == ["fuse", "convert_precision", "make_dummy_inputs", "verify", "benchmark"]
    assert adapter_names(pm) == []


def test_allow_list_env_keeps_only_named_plugins(fresh_fakes):
    pm = _pm(fresh_fakes, "fake_a", "fake_b", "timer", environ={plugins.ALLOW_ENV: " fake_b , timer"})
    assert adapter_names(pm) == ["fake_b"]
    listing = _by_name(pm)
    assert listing["fake_a"]["status"] == "not allowed" and "TFOPT_PLUGINS" in listing["fake_a"]["reason"]
    assert listing["timer"]["status"] == "active"


def test_empty_allow_list_means_no_plugin_but_the_builtins(fresh_fakes):
    pm = _pm(fresh_fakes, "fake_a", "timer", environ={plugins.ALLOW_ENV: ""})
    assert adapter_names(pm) == []
    assert plugins.active_plugin_names(pm) == ["default"]
    with pytest.raises(TfoptError, match=r"plugin 'fake_a' is not allowed \(not in TFOPT_PLUGINS\); no adapter is installed"):
        adapter_caller(pm, "fake_a", "export")


def test_not_selected_plugins_are_never_imported(fresh_fakes):
    pm = _pm(fresh_fakes, "broken", "fake_a", blocked=["broken"])
    assert _by_name(pm)["broken"] == {**_by_name(pm)["broken"], "status": "blocked", "error": None}
    assert "-p no:broken" in _by_name(pm)["broken"]["reason"]


def test_command_line_block(fresh_fakes):
    pm = _pm(fresh_fakes, "fake_a", "fake_b", blocked=parse_block_options(["no:fake_a"]))
    assert adapter_names(pm) == ["fake_b"]
    with pytest.raises(TfoptError, match=r"plugin 'fake_a' is blocked \(blocked by -p no:fake_a\); installed adapters: fake_b"):
        adapter_caller(pm, "fake_a", "export")


def test_block_option_needs_no_prefix():
    assert parse_block_options(["no:a", "no:b"]) == ["a", "b"]
    with pytest.raises(TfoptError, match="-p expects no:NAME"):
        parse_block_options(["fake_a"])


def test_builtin_cannot_be_blocked(fresh_fakes):
    with pytest.raises(TfoptError, match="built-in plugin 'default' cannot be blocked"):
        _pm(fresh_fakes, blocked=["default"])


def test_config_file_in_cwd_blocks_and_allows(fresh_fakes, tmp_path):
    (tmp_path / "tfopt.toml").write_text('[plugins]\nblock = ["fake_a"]\n')
    pm = _pm(fresh_fakes, "fake_a", "fake_b", cwd=tmp_path)
    assert adapter_names(pm) == ["fake_b"]
    assert "tfopt.toml" in _by_name(pm)["fake_a"]["reason"]
    (tmp_path / "tfopt.toml").write_text('[plugins]\nallow = ["fake_a"]\n')
    assert adapter_names(_pm(fresh_fakes, "fake_a", "fake_b", cwd=tmp_path)) == ["fake_a"]


def test_env_allow_list_wins_over_config_allow(fresh_fakes, tmp_path):
    (tmp_path / "tfopt.toml").write_text('[plugins]\nallow = ["fake_a"]\n')
    pm = _pm(fresh_fakes, "fake_a", "fake_b", cwd=tmp_path, environ={plugins.ALLOW_ENV: "fake_b"})
    assert adapter_names(pm) == ["fake_b"]


def test_config_file_named_by_env(fresh_fakes, tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text('[plugins]\nblock = ["fake_b"]\n')
    pm = _pm(fresh_fakes, "fake_a", "fake_b", environ={plugins.CONFIG_ENV: str(config)}, cwd=tmp_path / "nowhere")
    assert adapter_names(pm) == ["fake_a"]
    with pytest.raises(TfoptError, match="config file named by TFOPT_CONFIG does not exist"):
        _pm(fresh_fakes, "fake_a", environ={plugins.CONFIG_ENV: str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    "text, message",
    [
        ("[plugins\n", "invalid|cannot read config"),
        ('[plugins]\nblok = ["x"]\n', "unknown key.*blok"),
        ('[plugins]\nblock = "x"\n', "must be a list of plugin names"),
        ('plugins = 3\n', r"\[plugins\] must be a table"),
    ],
)
def test_bad_config_is_a_one_line_error(fresh_fakes, tmp_path, text, message):
    (tmp_path / "tfopt.toml").write_text(text)
    with pytest.raises(TfoptError, match=message) as info:
        _pm(fresh_fakes, "fake_a", cwd=tmp_path)
    assert "\n" not in str(info.value)


def test_unknown_adapter_lists_installed(fresh_fakes):
    pm = _pm(fresh_fakes, "fake_a", "fake_b", "timer")
    with pytest.raises(TfoptError) as info:
        adapter_caller(pm, "gpt3", "export")
    assert str(info.value) == "unknown plugin 'gpt3'; installed adapters: fake_a, fake_b"


def test_an_extension_is_not_an_adapter(fresh_fakes):
    pm = _pm(fresh_fakes, "fake_a", "timer")
    assert adapter_names(pm) == ["fake_a"]  # timer wraps export, but wrappers do not make adapters
    with pytest.raises(TfoptError, match="'timer' is not an adapter"):
        adapter_caller(pm, "timer", "export")


def test_adapter_caller_leaves_other_adapters_out(fresh_fakes, run_context):
    pm = _pm(fresh_fakes, "fake_a", "fake_b", "timer")
    ctx = run_context("fake_b")
    adapter_caller(pm, "fake_b", "export")(ctx=ctx)
    assert fresh_fakes.CALLS == [("fake_b", "export")]
    assert fresh_fakes.TIMER.order == ["export"]  # the extension still took part
    callers = {impl.plugin_name for impl in adapter_caller(pm, "fake_b", "fuse").get_hookimpls()}
    assert callers == {"fake_b", "default", "timer"}
    generic = {impl.plugin_name for impl in generic_caller(pm, "fuse").get_hookimpls()}
    assert generic == {"default", "timer"}


def test_unknown_hook_name_is_a_load_error(fresh_fakes):
    class Typo:
        @plugins.hookspecs.hookimpl
        def fuze(self, ctx):
            return None

    pm = build_plugin_manager(entry_points=[])
    assert not plugins.register_plugin(pm, Typo(), "typo")
    entry = _by_name(pm)["typo"]
    assert entry["status"] == "failed" and "unknown hook(s) fuze" in entry["error"]
    assert pm.get_plugin("typo") is None


def test_bad_hook_signature_is_a_load_error(fresh_fakes):
    class WrongArgs:
        @plugins.hookspecs.hookimpl
        def export(self, ctx, colour):
            return None

    pm = build_plugin_manager(entry_points=[])
    assert not plugins.register_plugin(pm, WrongArgs(), "wrong")
    assert "colour" in _by_name(pm)["wrong"]["error"]


def test_list_plugins_reports_versions_and_hooks_of_installed_distributions():
    pm = build_plugin_manager(environ={})
    listing = _by_name(pm)
    assert listing["default"]["distribution"] == "tfopt" and listing["default"]["version"]
    for entry in listing.values():
        assert set(entry) == {"name", "distribution", "version", "hooks", "is_adapter", "builtin", "status", "reason", "error"}
        if entry["is_adapter"]:
            assert "export" in entry["hooks"]


def test_in_process_registration_respects_blocks(fresh_fakes):
    pm = _pm(fresh_fakes, "fake_a", blocked=["fake_a"])
    assert not plugins.register_plugin(pm, fresh_fakes.FakeAdapter("fake_a", []), "fake_a")
    assert adapter_names(pm) == [] and _by_name(pm)["fake_a"]["status"] == "blocked"
    assert plugins.register_plugin(pm, fresh_fakes.FakeAdapter("other", []), "other")
    assert adapter_names(pm) == ["other"]


def test_allow_list_naming_an_uninstalled_plugin_is_one_warning_line(fresh_fakes, tmp_path):
    only_unknown = _pm(fresh_fakes, "fake_a", "fake_b", environ={plugins.ALLOW_ENV: "nosuch"})
    assert only_unknown.warnings == [
        "TFOPT_PLUGINS names 'nosuch', which is not installed (installed plugins: fake_a, fake_b)"
    ]
    mixed = _pm(fresh_fakes, "fake_a", "fake_b", environ={plugins.ALLOW_ENV: "fake_a,nosuch,other"})
    assert mixed.warnings == [
        "TFOPT_PLUGINS names 'nosuch', 'other', which are not installed (installed plugins: fake_a, fake_b)"
    ]
    assert adapter_names(mixed) == ["fake_a"]
    (tmp_path / "tfopt.toml").write_text('[plugins]\nallow = ["fake_b", "nosuch"]\n')
    from_config = _pm(fresh_fakes, "fake_a", "fake_b", environ={}, cwd=tmp_path)
    assert len(from_config.warnings) == 1 and from_config.warnings[0].startswith(
        f"plugins.allow of {tmp_path / 'tfopt.toml'} names 'nosuch', which is not installed"
    )
    (tmp_path / "tfopt.toml").unlink()
    # no warning when everything named exists, when nothing is named, or for the built-in
    assert _pm(fresh_fakes, "fake_a", environ={plugins.ALLOW_ENV: "fake_a,default"}).warnings == []
    assert _pm(fresh_fakes, "fake_a", environ={plugins.ALLOW_ENV: ""}).warnings == []
    assert _pm(fresh_fakes, "fake_a", environ={}).warnings == []
