"""Job kinds: one class per kind (script, lora, pipeline, sweep, serve), looked up in KINDS."""
