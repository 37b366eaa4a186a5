"""The page: steps in order (Character, Motion, Prompt, Generate) on the first tab, then
Lip-sync, History and System. Layout and event wiring only; `handlers` does the calls.

Wiring is by name. Every widget is an attribute of `Page`, and a handler's parameters and the
keys of the dict it returns use those attribute names. `wire` passes the listed widgets as
keyword arguments (gradio's `inputs_kwargs`, which also names the API parameters:
`client.predict(reference=..., prompt=..., api_name="/generate")`) and turns the returned
`{name: value}` into gradio's dict-of-outputs form `{component: value}`. Outputs a handler
leaves out keep their value. Moving or adding a widget changes no argument position.
"""

import functools
from pathlib import Path

import gradio as gr

from dynamictrl.lipsync.settings import LipSyncSettings
from dynamictrl.settings import PoseSettings, widget_spec

from .handlers import CUSTOM_SIZE, CUSTOM_SPEED, MASK_MODES, AppConfig, Handlers
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

# Inputs shared by several events, by widget name.
SIZE = ["size_preset", "width", "height"]
MOTION = ["driving", "is_pose_video", *SIZE, "start", "frames", "fps", "retarget"]
MASK_VIEW = ["mask_preview", "masked_preview", "mask_mode", "mask_points", "mask_info"]
HISTORY_VIEW = ["gallery", "history_table", "history_paths", "history_manifest", "history_index"]
SYSTEM_VIEW = ["system_info", "models_table", "loaded_models"]


class Page:
    """The page's widgets, each under the name the handlers use for it."""

    def widgets(self, names: list[str]) -> dict:
        return {name: getattr(self, name) for name in names}


def by_name(handler, outputs: dict):
    """`handler` returns `{name: value}`; gradio gets `{component: value}` for `outputs`."""

    @functools.wraps(handler)  # gradio reads the handler's signature (names, gr.Request, gr.Progress)
    def call(*args, **kwargs):
        values = handler(*args, **kwargs) or {}
        unknown = set(values) - set(outputs)
        if unknown:  # a wiring mistake, found the first time the event runs (tests run every event)
            raise KeyError(f"{getattr(handler, '__name__', handler)} returned {sorted(unknown)}, not among its "
                           f"outputs {sorted(outputs)}")
        if not outputs:
            return None
        # Every output in the dict, the ones left out as gr.skip(): gradio would take an empty
        # dict for the value of a lone output.
        return {widget: values.get(name, gr.skip()) for name, widget in outputs.items()}

    return call


def wire(page: Page, trigger, handler, inputs: list[str] = (), outputs: list[str] = (), **options):
    """`trigger(handler)` with the named widgets as keyword inputs and as dict outputs."""
    output_widgets = page.widgets(list(outputs))
    return trigger(by_name(handler, output_widgets), inputs_kwargs=page.widgets(list(inputs)) or None,
                   outputs=list(output_widgets.values()), **options)


def build_app(studio, config: AppConfig) -> gr.Blocks:
    handlers = Handlers(studio, config)
    page = Page()
    with gr.Blocks(title="DynamiCtrl Studio") as app:
        gr.Markdown("# DynamiCtrl Studio\nOne photo of a person + a dance → that person dancing, steered by a prompt.")
        if config.tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        page.mask_points = gr.State([])
        page.pose_state = gr.State({})
        page.auto_caption_text = gr.State("")
        with gr.Tabs() as page.tabs:
            with gr.Tab("Create", id="create"):
                build_character(page, config)
                build_motion(page, config)
                build_prompt(page)
                build_generate(page, config)
            with gr.Tab("Lip-sync", id="lipsync"):
                build_lipsync(page)
            with gr.Tab("History", id="history") as page.history_tab:
                build_history(page)
            with gr.Tab("System", id="system") as page.system_tab:
                build_system(page, config)
        wire_character(page, handlers)
        wire_motion(page, handlers)
        wire_prompt(page, handlers)
        wire_generate(page, handlers)
        wire_lipsync(page, handlers)
        wire_history(page, handlers)
        wire_system(page, handlers, config)
    return app


# ------------------------------------------------------------------ sections
def build_character(page: Page, config: AppConfig) -> None:
    gr.Markdown("## 1. Character")
    with gr.Row():
        with gr.Column():
            # The file as uploaded: dynamictrl.images reads and converts it.
            page.reference = ImageUpload(label="Reference image", type="filepath", image_mode=None,
                                         sources=["upload", "clipboard"], elem_id="reference-image", height=360)
            page.size_preset = gr.Dropdown([*config.size_presets, CUSTOM_SIZE], value=config.default_size,
                                           label="Target size (width x height)", elem_id="size-preset")
            with gr.Row():
                width, height = widget_spec("width"), widget_spec("height")
                page.width = gr.Number(value=width.default, label="Width (multiple of 16)", precision=0, visible=False,
                                       minimum=width.minimum, maximum=width.maximum, step=width.step)
                page.height = gr.Number(value=height.default, label="Height (multiple of 16)", precision=0,
                                        visible=False, minimum=height.minimum, maximum=height.maximum, step=height.step)
            if (ASSETS / "reference_figure.png").is_file():
                gr.Examples([[str(ASSETS / "reference_figure.png")]], inputs=[page.reference], label="Example reference")
        with gr.Column():
            page.crop = gr.Image(label="Crop preview (what the model sees) · click to add mask points",
                                 interactive=False, elem_id="crop-preview", height=360)
            page.crop_info = gr.Markdown(label="Crop note", elem_id="crop-info")
    with gr.Accordion("Mask (optional: replace the background or the clothing)", open=True):
        with gr.Row():
            page.mask_person = gr.Button("Person", elem_id="mask-person")
            page.mask_background = gr.Button("Background", elem_id="mask-background")
            page.mask_clothing = gr.Button("Clothing", elem_id="mask-clothing")
            page.clear_mask = gr.Button("Clear mask", elem_id="clear-mask")
        page.mask_info = gr.Markdown("Person: check what SAM takes as the person (nothing is blacked out). "
                                     "Background / Clothing: black that out for the model, to be described "
                                     "in the prompt. Clicks on the crop preview refine the mask.",
                                     label="Mask note", elem_id="mask-info")
        with gr.Row():
            page.mask_mode = gr.Radio(list(MASK_MODES), value="none", label="Mask mode (what is blacked out)",
                                      elem_id="mask-mode")
            page.click_label = gr.Radio(["add (include)", "remove (exclude)"], value="add (include)",
                                        label="A click on the crop preview…", elem_id="click-label")
        with gr.Row():
            # PNG: webp would smear the mask's edges and the point markers' colours.
            page.mask_preview = gr.Image(label="Mask (tinted = blacked out; after Person: the person)",
                                         interactive=False, elem_id="mask-preview", height=300, format="png")
            page.masked_preview = gr.Image(label="What the model gets", interactive=False,
                                           elem_id="masked-preview", height=300, format="png")


def build_motion(page: Page, config: AppConfig) -> None:
    gr.Markdown("## 2. Motion")
    with gr.Row():
        with gr.Column():
            page.driving = VideoUpload(label="Driving video (a dance) or a ready pose video", sources=["upload"],
                                       elem_id="driving-video", height=320)
            page.is_pose_video = gr.Checkbox(False, label="This is already a pose video (frame 0 = the reference's pose)")
            if (ASSETS / "dance_figure.mp4").is_file():
                gr.Examples([[str(ASSETS / "dance_figure.mp4")]], inputs=[page.driving], label="Example clip")
            with gr.Row():
                start, frames, fps = (widget_spec(name, PoseSettings) for name in ("start_s", "num_frames", "fps"))
                page.start = gr.Number(start.default, label="Start (s)", minimum=start.minimum)
                page.frames = gr.Number(config.default_frames, label="Frames (4k+1)", precision=0,
                                        minimum=frames.minimum, step=frames.step, elem_id="frames")
                page.fps = gr.Number(fps.default, label="fps (0 = every frame)", minimum=fps.minimum, maximum=fps.maximum)
                page.whole = gr.Button("Whole clip", size="sm", elem_id="whole-clip")
            retarget = widget_spec("retarget", PoseSettings)
            page.retarget = gr.Dropdown(list(retarget.choices), value=retarget.default, label="Retargeting",
                                        info="global: the official fit · bones: limb lengths of the reference · none")
            page.extract = gr.Button("Extract poses", variant="secondary", elem_id="extract-poses")
        with gr.Column():
            page.pose_video = gr.Video(label="Pose video", interactive=False, elem_id="pose-video", height=320)
            page.pose_overlay = gr.Video(label="Skeletons over the reference | driving video", interactive=False,
                                         elem_id="pose-overlay", height=320)
            page.pose_info = gr.Markdown()


def build_prompt(page: Page) -> None:
    gr.Markdown("## 3. Prompt")
    with gr.Row():
        with gr.Column(scale=3):
            page.prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                     placeholder="Describe the person and the background, or click Auto caption.")
            page.negative_prompt = gr.Textbox(label="Negative prompt", lines=1)
        with gr.Column(scale=1):
            page.caption_button = gr.Button("Auto caption", elem_id="auto-caption")
            page.hint = gr.Markdown(elem_id="consistency-hint")


def build_generate(page: Page, config: AppConfig) -> None:
    gr.Markdown("## 4. Generate")
    with gr.Row():
        with gr.Column():
            page.speed = gr.Dropdown([*config.speed_presets, CUSTOM_SPEED], value=config.default_speed,
                                     label="Quality / speed", elem_id="speed")
            steps, guidance = widget_spec("steps"), widget_spec("guidance")
            page.steps = gr.Slider(steps.minimum, steps.maximum, value=config.default_steps, step=steps.step,
                                   label="Steps", elem_id="steps")
            page.guidance = gr.Slider(guidance.minimum, guidance.maximum, value=guidance.default, step=guidance.step,
                                      label="Guidance")
            with gr.Row():
                page.seed = gr.Number(widget_spec("seed").default, label="Seed", precision=0, scale=4, elem_id="seed")
                page.dice = gr.Button("Random seed", scale=1, min_width=80)
            page.offload = gr.Dropdown(list(widget_spec("offload").choices), value=config.offload,
                                       label="Offload (memory tier)")
            with gr.Row():
                page.generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                page.cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
        with gr.Column():
            page.result_video = gr.Video(label="Result", interactive=False, elem_id="result-video", height=400)
            page.result_files = gr.File(label="Download (video + manifest)", file_count="multiple", interactive=False)
            with gr.Accordion("Manifest", open=False):
                page.manifest = gr.JSON(label="Manifest")


def build_lipsync(page: Page) -> None:
    lip = {name: widget_spec(name, LipSyncSettings) for name in
           ("bbox_shift", "extra_margin", "parsing_mode", "left_cheek_width", "right_cheek_width")}
    gr.Markdown("Make the character speak: a video with a visible face (your result, or any clip) and "
                "speech. The output lasts as long as the speech; a shorter video plays forward and "
                "backward (MuseTalk 1.5).")
    with gr.Row():
        with gr.Column():
            page.lipsync_video = VideoUpload(label="Video with a face", sources=["upload"], elem_id="lipsync-video",
                                             height=320)
            page.use_result = gr.Button("Use the latest result", size="sm", elem_id="lipsync-use-result")
            page.speech = AudioUpload(label="Speech (wav, mp3, flac, ogg, m4a) or record", type="filepath",
                                      sources=["upload", "microphone"], elem_id="lipsync-audio")
            with gr.Accordion("Settings", open=False):
                spec = lip["bbox_shift"]
                page.bbox_shift = gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=spec.step,
                                            label="Mouth region shift (px; positive opens the mouth more)")
                spec = lip["extra_margin"]
                page.extra_margin = gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=spec.step,
                                              label="Chin margin (px below the chin in the face crop)")
                page.parsing_mode = gr.Dropdown(list(lip["parsing_mode"].choices), value=lip["parsing_mode"].default,
                                                label="Blended region", info="jaw: MuseTalk 1.5's default")
                with gr.Row():
                    spec = lip["left_cheek_width"]
                    page.left_cheek = gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=spec.step,
                                                label="Left cheek width")
                    spec = lip["right_cheek_width"]
                    page.right_cheek = gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=spec.step,
                                                 label="Right cheek width")
            with gr.Row():
                page.lipsync_button = gr.Button("Lip-sync", variant="primary", elem_id="lipsync-run")
                page.lipsync_cancel = gr.Button("Cancel", variant="stop")
        with gr.Column():
            page.lipsync_result = gr.Video(label="Lip-synced video", interactive=False, elem_id="lipsync-result",
                                           height=400)
            page.lipsync_report = gr.Markdown(elem_id="lipsync-report")
            page.lipsync_files = gr.File(label="Download (video + manifest)", file_count="multiple", interactive=False)


def build_history(page: Page) -> None:
    page.refresh_history = gr.Button("Refresh", elem_id="refresh-history")
    # Fixed columns and height: fit_columns would blow a lone result up to the page width.
    page.gallery = gr.Gallery(label="Past results", columns=5, height=280, object_fit="contain", fit_columns=False,
                              allow_preview=True, preview=False, elem_id="history-gallery")
    page.history_table = gr.Dataframe(headers=["created", "output", "seed", "steps", "size", "prompt"],
                                      interactive=False, elem_id="history-table", wrap=True)
    page.history_paths = gr.State([])
    with gr.Row():
        page.reuse = gr.Button("Reuse settings", elem_id="reuse-settings")
    with gr.Accordion("Selected result's settings", open=False):
        page.history_manifest = gr.JSON(elem_id="history-manifest")
    page.history_index = gr.State(None)


def build_system(page: Page, config: AppConfig) -> None:
    page.system_info = gr.Markdown(elem_id="system-info")
    page.models_table = gr.Dataframe(headers=["model", "loaded", "device", "GB", "in use", "load s"],
                                     interactive=False, elem_id="models-table")
    with gr.Row():
        page.loaded_models = gr.Dropdown([], label="Loaded model")
        # Admin actions: only for a logged-in (--auth) or local-only server (AppConfig.admin_actions).
        if config.admin_actions:
            page.unload_one = gr.Button("Unload", elem_id="unload-one")
            page.unload_everything = gr.Button("Unload all", variant="stop", elem_id="unload-all")
        page.refresh_system = gr.Button("Refresh", elem_id="refresh-system")
    if not config.admin_actions:
        gr.Markdown(ADMIN_NOTE, elem_id="admin-note")


# ------------------------------------------------------------------ wiring
def wire_character(page: Page, handlers: Handlers) -> None:
    wire(page, page.size_preset.change, handlers.size_fields, ["size_preset"], ["width", "height"], api_name=False,
         queue=False)
    wire(page, page.reference.change, handlers.crop_preview, ["reference", *SIZE], ["crop", "crop_info"],
         api_name="crop_preview")
    for trigger in (page.size_preset.change, page.width.submit, page.height.submit):
        wire(page, trigger, handlers.crop_preview, ["reference", *SIZE], ["crop", "crop_info"], api_name=False)
    for button, kind in ((page.mask_person, "person"), (page.mask_background, "background"),
                         (page.mask_clothing, "clothing")):
        wire(page, button.click, functools.partial(handlers.mask_start, kind), ["reference", *SIZE], MASK_VIEW,
             api_name=f"mask_{kind}", concurrency_id=GPU)
    wire(page, page.crop.select, handlers.mask_click, ["reference", *SIZE, "mask_mode", "click_label", "mask_points"],
         MASK_VIEW, api_name=False, concurrency_id=GPU)
    wire(page, page.clear_mask.click, handlers.clear_mask, [], MASK_VIEW, api_name=False, queue=False)


def wire_motion(page: Page, handlers: Handlers) -> None:
    wire(page, page.whole.click, handlers.whole_clip, ["driving", "start", "fps"], ["frames", "pose_info"],
         api_name="whole_clip", queue=False)
    wire(page, page.extract.click, handlers.extract_poses, ["reference", *MOTION],
         ["pose_video", "pose_overlay", "pose_info", "pose_state"], api_name="extract_poses", concurrency_id=GPU)


def wire_prompt(page: Page, handlers: Handlers) -> None:
    wire(page, page.caption_button.click, handlers.auto_caption, ["reference", *SIZE, "mask_mode", "mask_points"],
         ["prompt", "auto_caption_text", "hint"], api_name="auto_caption", concurrency_id=GPU)
    wire(page, page.prompt.blur, handlers.prompt_hint, ["auto_caption_text", "prompt"], ["hint"], api_name=False,
         queue=False)


def wire_generate(page: Page, handlers: Handlers) -> None:
    wire(page, page.speed.change, handlers.speed_preset_steps, ["speed"], ["steps"], api_name=False, queue=False)
    # `input`: the user's own changes only (a preset setting Steps must not turn the label to custom).
    wire(page, page.steps.input, handlers.speed_label, ["steps", "speed"], ["speed"], api_name=False, queue=False)
    wire(page, page.dice.click, handlers.dice, [], ["seed"], api_name=False, queue=False)
    # Armed before queuing, so a Cancel pressed while the job waits in the queue still counts.
    armed = page.generate_button.click(handlers.arm_cancel, None, None, api_name=False, queue=False)
    generate_event = wire(
        page, armed.then, handlers.generate,
        ["reference", *MOTION, "mask_mode", "mask_points", "prompt", "negative_prompt", "steps", "guidance", "seed",
         "speed", "offload", "pose_state"],
        ["result_video", "manifest", "result_files"], api_name="generate", concurrency_id=GPU,
    )
    # Cancel stops the job between denoising steps (the handler raises); the page stops waiting at once.
    # Also an endpoint: API clients stop their session's running job the way the button does
    # (gradio_client's `job.cancel()` only drops a job that has not started).
    page.cancel_button.click(handlers.cancel, None, None, api_name="cancel", queue=False)
    wire(page, generate_event.then, handlers.history, [], HISTORY_VIEW, api_name=False)


def wire_lipsync(page: Page, handlers: Handlers) -> None:
    wire(page, page.use_result.click, handlers.latest_result, ["result_video"], ["lipsync_video"], api_name=False,
         queue=False)
    armed = page.lipsync_button.click(handlers.arm_cancel, None, None, api_name=False, queue=False)
    lipsync_event = wire(
        page, armed.then, handlers.lipsync,
        ["lipsync_video", "speech", "bbox_shift", "extra_margin", "parsing_mode", "left_cheek", "right_cheek"],
        ["lipsync_result", "lipsync_report", "lipsync_files"], api_name="lipsync", concurrency_id=GPU,
    )
    page.lipsync_cancel.click(handlers.cancel, None, None, api_name=False, queue=False)
    wire(page, lipsync_event.then, handlers.history, [], HISTORY_VIEW, api_name=False)


def wire_history(page: Page, handlers: Handlers) -> None:
    wire(page, page.refresh_history.click, handlers.history, [], HISTORY_VIEW, api_name="history")
    wire(page, page.history_tab.select, handlers.history, [], HISTORY_VIEW, api_name=False)
    for table in (page.gallery, page.history_table):
        wire(page, table.select, handlers.history_select, ["history_paths"], ["history_manifest", "history_index"],
             api_name=False)
    wire(page, page.reuse.click, handlers.reuse_settings, ["history_manifest"],
         [*SIZE, "frames", "fps", "mask_mode", "mask_points", "prompt", "negative_prompt", "steps", "speed", "guidance",
          "seed", "offload", "tabs"], api_name="reuse_settings")


def wire_system(page: Page, handlers: Handlers, config: AppConfig) -> None:
    wire(page, page.refresh_system.click, handlers.system_status, [], SYSTEM_VIEW, api_name="system_status")
    wire(page, page.system_tab.select, handlers.system_status, [], SYSTEM_VIEW, api_name=False)
    if config.admin_actions:
        wire(page, page.unload_one.click, handlers.unload, ["loaded_models"], SYSTEM_VIEW, api_name=False)
        wire(page, page.unload_everything.click, handlers.unload_all, [], SYSTEM_VIEW, api_name="unload_all")
