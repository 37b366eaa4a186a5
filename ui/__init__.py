"""Gradio widgets wired to `dynamictrl.studio` functions. Never imports torch.

- `layout.build_app(studio, config)`: the Blocks page (Character, Motion, Prompt,
  Generate, Lip-sync, History, System).
- `handlers.Handlers`: one method per event; each calls `dynamictrl` and turns its
  errors into `gr.Error` messages.
- `gpu`: the Hugging Face ZeroGPU wrapper (`spaces.GPU`) when available, else a no-op.
"""
