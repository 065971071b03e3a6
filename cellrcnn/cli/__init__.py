"""The command-line tools, one module per command (``cellrcnn-<command>``); each parses its
arguments, calls the library and reports in flag terms.
"""

from ..utils.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    ".common": ("add_config_arguments", "config_overrides", "data_config_from_args", "in_cli_terms"),
    ".check_data": ("check_data_main",),
    ".finetune": ("finetune_main",),
    ".predict": ("predict_main",),
    ".evaluate": ("evaluate_main",),
    ".export_model": ("export_model_main",),
})
