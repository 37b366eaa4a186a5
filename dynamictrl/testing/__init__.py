"""Tiny, randomly initialised models saved in the real hub layouts, one module per family.

They stand in for the real weights (~35 GB) in the test suite, the benchmarks, tiny mode
(`python app.py --tiny`, `dynamictrl.tiny`) and the Ray service's `--tiny`, and are loaded
back through the same `from_pretrained` code a user runs on the real checkpoints.
Outputs are noise; the layouts, names, shapes and dtypes are real.

- `models`: DynamiCtrl (T5 tokenizer + encoder, CogVideoX VAE, transformer, scheduler) and the mask variants
- `onnx`: DWPose's two ONNX files with known outputs
- `qwen`: Qwen2-VL (captions)
- `sam`: Segment Anything (ViT-B layout)
- `musetalk`: MuseTalk 1.5 (UNet, VAE, plus `whisper` and `face_parser`)
- `eval`: the evaluation backbones (LPIPS, video features) and small datasets
"""
