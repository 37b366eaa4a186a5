"""The page: steps in order (Character, Motion, Prompt, Generate) on the first tab, then
Lip-sync, History and System. Layout and event wiring only; `handlers` does the calls."""

from pathlib import Path

import gradio as gr

from dynamictrl.lipsync.settings import PARSING_MODES, LipSyncSettings
from dynamictrl.manager import OFFLOAD_CHOICES

from .handlers import CUSTOM_SIZE, MASK_MODES, RETARGET_CHOICES, AppConfig, Handlers
from .uploads import AudioUpload, ImageUpload, VideoUpload

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GPU = "gpu"  # one concurrency group for every model-running event: one GPU job at a time

TINY_BANNER = (
    "### Tiny mode: every model is a tiny random stand-in; outputs are noise.\n"
    "It exists to try the whole flow without downloading weights. Run `python app.py` without `--tiny` for real results."
)
ADMIN_NOTE = ("Unloading models is an admin action: this server is reachable by others without a login, so "
              "it is off. The person running the app can start it with `--auth USER:PASSWORD` to have it here.")
CSS = """
#tiny-banner { background: #fff4d6; border: 1px solid #e0b84c; border-radius: 8px; padding: 4px 12px; }
"""


def build_app(studio, config: AppConfig) -> gr.Blocks:
    handlers = Handlers(studio, config)
    lip_defaults = LipSyncSettings()
    size_choices = [*config.size_presets, CUSTOM_SIZE]

    with gr.Blocks(title="DynamiCtrl Studio") as app:
        gr.Markdown("# DynamiCtrl Studio\nOne photo of a person + a dance → that person dancing, steered by a prompt.")
        if config.tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        mask_points = gr.State([])
        pose_state = gr.State({})
        auto_caption_text = gr.State("")

        with gr.Tabs() as tabs:
            with gr.Tab("Create", id="create"):
                # ---------------------------------------------------------- 1. Character
                gr.Markdown("## 1. Character")
                with gr.Row():
                    with gr.Column():
                        # The file as uploaded: dynamictrl.images reads and converts it.
                        reference = ImageUpload(label="Reference image", sources=["upload", "clipboard"],
                                                elem_id="reference-image", height=360)
                        size_preset = gr.Dropdown(size_choices, value=config.default_size, label="Target size (width x height)",
                                                  elem_id="size-preset")
                        with gr.Row():
                            custom_width = gr.Number(value=768, label="Width (multiple of 16)", precision=0, visible=False)
                            custom_height = gr.Number(value=1360, label="Height (multiple of 16)", precision=0,
                                                      visible=False)
                        if (ASSETS / "reference_figure.png").is_file():
                            gr.Examples([[str(ASSETS / "reference_figure.png")]], inputs=[reference],
                                        label="Example reference")
                    with gr.Column():
                        crop = gr.Image(label="Crop preview (what the model sees) · click to add mask points",
                                        interactive=False, elem_id="crop-preview", height=360)
                        crop_info = gr.Markdown(label="Crop note", elem_id="crop-info")
                with gr.Accordion("Mask (optional: replace the background or the clothing)", open=True):
                    with gr.Row():
                        mask_person = gr.Button("Person", elem_id="mask-person")
                        mask_background = gr.Button("Background", elem_id="mask-background")
                        mask_clothing = gr.Button("Clothing", elem_id="mask-clothing")
                        clear_mask = gr.Button("Clear mask", elem_id="clear-mask")
                    mask_info = gr.Markdown("Person: check what SAM takes as the person (nothing is blacked out). "
                                            "Background / Clothing: black that out for the model, to be described "
                                            "in the prompt. Clicks on the crop preview refine the mask.",
                                            label="Mask note", elem_id="mask-info")
                    with gr.Row():
                        mask_mode = gr.Radio(list(MASK_MODES), value="none", label="Mask mode (what is blacked out)",
                                             elem_id="mask-mode")
                        click_label = gr.Radio(["add (include)", "remove (exclude)"], value="add (include)",
                                               label="A click on the crop preview…", elem_id="click-label")
                    with gr.Row():
                        # PNG: webp would smear the mask's edges and the point markers' colours.
                        mask_preview = gr.Image(label="Mask (tinted = blacked out; after Person: the person)",
                                                interactive=False, elem_id="mask-preview", height=300, format="png")
                        masked_preview = gr.Image(label="What the model gets", interactive=False,
                                                  elem_id="masked-preview", height=300, format="png")

                # ---------------------------------------------------------- 2. Motion
                gr.Markdown("## 2. Motion")
                with gr.Row():
                    with gr.Column():
                        driving = VideoUpload(label="Driving video (a dance) or a ready pose video", sources=["upload"],
                                              elem_id="driving-video", height=320)
                        is_pose_video = gr.Checkbox(False, label="This is already a pose video (frame 0 = the reference's pose)")
                        if (ASSETS / "dance_figure.mp4").is_file():
                            gr.Examples([[str(ASSETS / "dance_figure.mp4")]], inputs=[driving], label="Example clip")
                        with gr.Row():
                            start = gr.Number(0, label="Start (s)", minimum=0)
                            frames = gr.Number(config.default_frames, label="Frames (4k+1)", precision=0, minimum=5, step=4,
                                               elem_id="frames")
                            fps = gr.Number(16, label="fps (0 = every frame)", minimum=0)
                            whole = gr.Button("Whole clip", size="sm", elem_id="whole-clip")
                        retarget = gr.Dropdown(list(RETARGET_CHOICES), value="global", label="Retargeting",
                                               info="global: the official fit · bones: limb lengths of the reference · none")
                        extract = gr.Button("Extract poses", variant="secondary", elem_id="extract-poses")
                    with gr.Column():
                        pose_video = gr.Video(label="Pose video", interactive=False, elem_id="pose-video", height=320)
                        pose_overlay = gr.Video(label="Skeletons over the reference | driving video", interactive=False,
                                                elem_id="pose-overlay", height=320)
                        pose_info = gr.Markdown()

                # ---------------------------------------------------------- 3. Prompt
                gr.Markdown("## 3. Prompt")
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                            placeholder="Describe the person and the background, or click Auto caption.")
                        negative = gr.Textbox(label="Negative prompt", lines=1)
                    with gr.Column(scale=1):
                        caption_button = gr.Button("Auto caption", elem_id="auto-caption")
                        hint = gr.Markdown(elem_id="consistency-hint")

                # ---------------------------------------------------------- 4. Generate
                gr.Markdown("## 4. Generate")
                with gr.Row():
                    with gr.Column():
                        speed = gr.Dropdown(list(config.speed_presets), value=config.default_speed, label="Quality / speed")
                        steps = gr.Slider(1, 100, value=config.default_steps, step=1, label="Steps", elem_id="steps")
                        guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="Guidance")
                        with gr.Row():
                            seed = gr.Number(42, label="Seed", precision=0, scale=4, elem_id="seed")
                            dice = gr.Button("Random seed", scale=1, min_width=80)
                        offload = gr.Dropdown(list(OFFLOAD_CHOICES), value=config.offload, label="Offload (memory tier)")
                        with gr.Row():
                            generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                            cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    with gr.Column():
                        result_video = gr.Video(label="Result", interactive=False, elem_id="result-video", height=400)
                        result_files = gr.File(label="Download (video + manifest)", file_count="multiple",
                                               interactive=False)
                        with gr.Accordion("Manifest", open=False):
                            manifest = gr.JSON(label="Manifest")

            # -------------------------------------------------------------- Lip-sync
            with gr.Tab("Lip-sync", id="lipsync"):
                gr.Markdown("Make the character speak: a video with a visible face (your result, or any clip) and "
                            "speech. The output lasts as long as the speech; a shorter video plays forward and "
                            "backward (MuseTalk 1.5).")
                with gr.Row():
                    with gr.Column():
                        lip_video = VideoUpload(label="Video with a face", sources=["upload"], elem_id="lipsync-video",
                                                height=320)
                        use_result = gr.Button("Use the latest result", size="sm", elem_id="lipsync-use-result")
                        lip_audio = AudioUpload(label="Speech (wav, mp3, flac, ogg, m4a) or record",
                                                sources=["upload", "microphone"], elem_id="lipsync-audio")
                        with gr.Accordion("Settings", open=False):
                            bbox_shift = gr.Slider(-40, 40, value=lip_defaults.bbox_shift, step=1,
                                                   label="Mouth region shift (px; positive opens the mouth more)")
                            extra_margin = gr.Slider(0, 40, value=lip_defaults.extra_margin, step=1,
                                                     label="Chin margin (px below the chin in the face crop)")
                            parsing_mode = gr.Dropdown(list(PARSING_MODES), value=lip_defaults.parsing_mode,
                                                       label="Blended region", info="jaw: MuseTalk 1.5's default")
                            with gr.Row():
                                left_cheek = gr.Slider(20, 160, value=lip_defaults.left_cheek_width, step=1,
                                                       label="Left cheek width")
                                right_cheek = gr.Slider(20, 160, value=lip_defaults.right_cheek_width, step=1,
                                                        label="Right cheek width")
                        with gr.Row():
                            lipsync_button = gr.Button("Lip-sync", variant="primary", elem_id="lipsync-run")
                            lipsync_cancel = gr.Button("Cancel", variant="stop")
                    with gr.Column():
                        lip_result = gr.Video(label="Lip-synced video", interactive=False, elem_id="lipsync-result",
                                              height=400)
                        lip_report = gr.Markdown(elem_id="lipsync-report")
                        lip_files = gr.File(label="Download (video + manifest)", file_count="multiple",
                                            interactive=False)

            # -------------------------------------------------------------- History
            with gr.Tab("History", id="history") as history_tab:
                refresh_history = gr.Button("Refresh", elem_id="refresh-history")
                # Fixed columns and height: fit_columns would blow a lone result up to the page width.
                gallery = gr.Gallery(label="Past results", columns=5, height=280, object_fit="contain",
                                     fit_columns=False, allow_preview=True, preview=False, elem_id="history-gallery")
                history_table = gr.Dataframe(headers=["created", "output", "seed", "steps", "size", "prompt"],
                                             interactive=False, elem_id="history-table", wrap=True)
                history_paths = gr.State([])
                with gr.Row():
                    reuse = gr.Button("Reuse settings", elem_id="reuse-settings")
                with gr.Accordion("Selected result's settings", open=False):
                    history_manifest = gr.JSON(elem_id="history-manifest")
                history_index = gr.State(None)

            # -------------------------------------------------------------- System
            with gr.Tab("System", id="system") as system_tab:
                system_info = gr.Markdown(elem_id="system-info")
                models_table = gr.Dataframe(headers=["model", "loaded", "device", "GB", "in use", "load s"],
                                            interactive=False, elem_id="models-table")
                with gr.Row():
                    loaded_models = gr.Dropdown([], label="Loaded model")
                    # Admin actions: only for a logged-in (--auth) or local-only server (AppConfig.admin_actions).
                    if config.admin_actions:
                        unload_one = gr.Button("Unload", elem_id="unload-one")
                        unload_everything = gr.Button("Unload all", variant="stop", elem_id="unload-all")
                    refresh_system = gr.Button("Refresh", elem_id="refresh-system")
                if not config.admin_actions:
                    gr.Markdown(ADMIN_NOTE, elem_id="admin-note")

        # ------------------------------------------------------------------ wiring
        size_inputs = [size_preset, custom_width, custom_height]
        size_preset.change(handlers.size_fields, size_preset, [custom_width, custom_height], api_name=False, queue=False)
        reference.change(handlers.crop_preview, [reference, *size_inputs], [crop, crop_info], api_name="crop_preview")
        for trigger in (size_preset.change, custom_width.submit, custom_height.submit):
            trigger(handlers.crop_preview, [reference, *size_inputs], [crop, crop_info], api_name=False)

        mask_outputs = [mask_preview, masked_preview, mask_mode, mask_points, mask_info]
        for button, kind in ((mask_person, "person"), (mask_background, "background"), (mask_clothing, "clothing")):
            button.click(lambda *args, kind=kind: handlers.mask_start(kind, *args), [reference, *size_inputs],
                         mask_outputs, api_name=f"mask_{kind}", concurrency_id=GPU)
        crop.select(handlers.mask_click, [reference, *size_inputs, mask_mode, click_label, mask_points], mask_outputs,
                    api_name=False, concurrency_id=GPU)
        clear_mask.click(handlers.clear_mask, None, mask_outputs, api_name=False, queue=False)

        whole.click(handlers.whole_clip, [driving, start, fps], [frames, pose_info], api_name="whole_clip", queue=False)
        motion_inputs = [driving, is_pose_video, *size_inputs, start, frames, fps, retarget]
        extract.click(handlers.extract_poses, [reference, *motion_inputs], [pose_video, pose_overlay, pose_info, pose_state],
                      api_name="extract_poses", concurrency_id=GPU)

        caption_button.click(handlers.auto_caption, [reference, *size_inputs, mask_mode, mask_points],
                             [prompt, auto_caption_text, hint], api_name="auto_caption", concurrency_id=GPU)
        prompt.blur(handlers.hint, [auto_caption_text, prompt], hint, api_name=False, queue=False)

        speed.change(handlers.speed_preset_steps, speed, steps, api_name=False, queue=False)
        dice.click(handlers.dice, None, seed, api_name=False, queue=False)
        # Armed before queuing, so a Cancel pressed while the job waits in the queue still counts.
        generate_event = generate_button.click(handlers.arm_cancel, None, None, api_name=False, queue=False).then(
            handlers.generate,
            [reference, *motion_inputs, mask_mode, mask_points, prompt, negative, steps, guidance, seed, speed, offload,
             pose_state],
            [result_video, manifest, result_files],
            api_name="generate", concurrency_id=GPU,
        )
        # Cancel stops the job between denoising steps (the handler raises); the page stops waiting at once.
        # Also an endpoint: API clients stop their session's running job the way the button does
        # (gradio_client's `job.cancel()` only drops a job that has not started).
        cancel_button.click(handlers.cancel, None, None, api_name="cancel", queue=False)
        generate_event.then(handlers.history, None, [gallery, history_table, history_paths, history_manifest, history_index],
                            api_name=False)

        use_result.click(handlers.latest_result, result_video, lip_video, api_name=False, queue=False)
        lipsync_event = lipsync_button.click(handlers.arm_cancel, None, None, api_name=False, queue=False).then(
            handlers.lipsync, [lip_video, lip_audio, bbox_shift, extra_margin, parsing_mode, left_cheek, right_cheek],
            [lip_result, lip_report, lip_files], api_name="lipsync", concurrency_id=GPU,
        )
        lipsync_cancel.click(handlers.cancel, None, None, api_name=False, queue=False)
        lipsync_event.then(handlers.history, None, [gallery, history_table, history_paths, history_manifest, history_index],
                           api_name=False)

        history_outputs = [gallery, history_table, history_paths, history_manifest, history_index]
        refresh_history.click(handlers.history, None, history_outputs, api_name="history")
        history_tab.select(handlers.history, None, history_outputs, api_name=False)
        gallery.select(handlers.history_select, history_paths, [history_manifest, history_index], api_name=False)
        history_table.select(handlers.history_select, history_paths, [history_manifest, history_index], api_name=False)
        reuse.click(handlers.reuse_settings, history_manifest,
                    [size_preset, custom_width, custom_height, frames, fps, mask_mode, mask_points, prompt, negative,
                     steps, guidance, seed, offload, tabs], api_name="reuse_settings")

        system_outputs = [system_info, models_table, loaded_models]
        refresh_system.click(handlers.system_status, None, system_outputs, api_name="system_status")
        system_tab.select(handlers.system_status, None, system_outputs, api_name=False)
        if config.admin_actions:
            unload_one.click(handlers.unload, loaded_models, system_outputs, api_name=False)
            unload_everything.click(handlers.unload_all, None, system_outputs, api_name="unload_all")
    return app
