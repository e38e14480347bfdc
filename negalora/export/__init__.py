"""Export a training checkpoint as a LoRA file that A1111, ComfyUI and diffusers load: kohya or
diffusers keys, honest header metadata, a model card beside it, and a reload check before the file
is put in place. One module per job:

- ``source``: which run and checkpoint, read (safetensors only) and checked
- ``kohya_keys``: diffusers/peft key names to kohya's ``lora_unet_*`` / ``lora_te1_*`` / ``lora_te2_*``
- ``metadata``: the ``ss_*``, ``modelspec.*`` and ``negalora.*`` header keys, and their hashes
- ``writer``: serialising, temp files beside the destination, the atomic replace
- ``verify``: reload the written file with diffusers and compare it with the in-app LoRA
- ``evidence``: what the run measured about each way of using the LoRA (else the demo world)
- ``comfyui``: the ComfyUI workflows (UI and API format) that apply it on the negative pass
- ``model_card``: the Markdown card written beside the file
- ``exporter``: the order of it all, and the record in the store
"""

from negalora.api import FORMATS, ExportRequest

__all__ = ["FORMATS", "ExportPlan", "ExportRequest", "ExportResult", "export_lora", "plan_export", "run_export"]
_EXPORTER = {"ExportPlan", "ExportResult", "export_lora", "plan_export", "run_export"}


def __getattr__(name: str):
    # the exporter imports torch: only when an export is planned or run, not when a page imports the request
    if name in _EXPORTER:
        from negalora.export import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module 'negalora.export' has no attribute {name!r}")
