"""The page: on the first tab the inputs in order (Character, Motion, Prompt) on the left and
Generate (settings, live preview, result, variations) in a sticky column on the right, one
column on a phone; then Lip-sync, History, Models and System. Layout and event wiring only;
`handlers` does the calls.

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

from dynamictrl import catalog
from dynamictrl.lipsync.settings import LipSyncSettings
from dynamictrl.settings import GenerateSettings, PoseSettings, widget_spec

from .handlers import (
    CUSTOM_SIZE,
    CUSTOM_SPEED,
    HISTORY_HEADERS,
    MASK_MODES,
    MAX_VARIATIONS,
    AppConfig,
    Handlers,
    mask_status_text,
)
from .uploads import AudioUpload, ImageUpload, VideoUpload

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GPU = "gpu"  # one concurrency group for every model-running event: one GPU job at a time

TINY_BANNER = (
    "### Tiny mode: every model is a tiny random stand-in; outputs are noise.\n"
    "It exists to try the whole flow without downloading weights. Run `python app.py` without `--tiny` for real results."
)
ADMIN_NOTE = (
    "Unloading models is an admin action: this server is reachable by others without a login, so "
    "it is off. The person running the app can start it with `--auth USER:PASSWORD` to have it here."
)
# Two columns from a laptop's width up: the Generate column stays in view (sticky) while the
# inputs scroll; below that one column, nothing wider than the screen.
WIDE = 1000  # px: laptops and up; tablets in portrait and phones get one column
CSS = f"""
#tiny-banner {{ background: #fff4d6; border: 1px solid #e0b84c; border-radius: 8px; padding: 4px 12px; }}
/* gradio clips its container with overflow: hidden, which makes it the scroll box a sticky
   element sticks in (it never scrolls); clip cuts the same but is no scroll box. */
.gradio-container {{ overflow: clip !important; }}
@media (min-width: {WIDE}px) {{
  #generate-column {{ position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 16px);
                      overflow-y: auto; }}
}}
@media (max-width: {WIDE - 1}px) {{
  #create-columns {{ flex-direction: column; }}
  #create-columns > * {{ min-width: 0 !important; width: 100%; }}
}}
#live-preview img {{ image-rendering: pixelated; }}
.model-row .model-state {{ font-weight: 600; }}
.model-row[data-state="on disk"] .model-state {{ color: #1a7f37; }}
.model-row[data-state="partial"] .model-state {{ color: #b35900; }}
.model-row[data-state="missing"] .model-state {{ color: #c62828; }}
#history-table img {{ max-height: 64px; }}
"""

# Inputs shared by several events, by widget name.
SIZE = ["size_preset", "width", "height"]
MOTION = ["driving", "is_pose_video", *SIZE, "start", "frames", "fps", "retarget"]
# The mask buttons and clicks change only the preview; "Use this mask" hands it to Generate.
MASK_VIEW = ["mask_preview", "masked_preview", "preview_mode", "preview_points", "mask_info"]
ACTIVE_MASK = ["mask_mode", "mask_points", "mask_status"]
HISTORY_VIEW = ["gallery", "history_table", "history_paths", "history_manifest", "history_index"]
MISSING_VIEW = ["missing_models", "missing_names", "download_missing"]
PREVIEW = ["preview_timer", "live_preview"]
GENERATE_INPUTS = [
    "reference",
    *MOTION,
    "mask_mode",
    "mask_points",
    "prompt",
    "negative_prompt",
    "steps",
    "guidance",
    "seed",
    "speed",
    "offload",
    "pose_state",
    "preview_every",
]
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
            raise KeyError(
                f"{getattr(handler, '__name__', handler)} returned {sorted(unknown)}, not among its "
                f"outputs {sorted(outputs)}"
            )
        if not outputs:
            return None
        # Every output in the dict, the ones left out as gr.skip(): gradio would take an empty
        # dict for the value of a lone output.
        return {widget: values.get(name, gr.skip()) for name, widget in outputs.items()}

    if isinstance(handler, functools.partial):
        # gradio finds gr.Request / gr.Progress parameters by their type hints, which a
        # partial does not carry: those of the function it wraps.
        call.__annotations__ = dict(getattr(handler.func, "__annotations__", {}))
    return call


def wire(page: Page, trigger, handler, inputs: list[str] = (), outputs: list[str] = (), **options):
    """`trigger(handler)` with the named widgets as keyword inputs and as dict outputs."""
    output_widgets = page.widgets(list(outputs))
    return trigger(
        by_name(handler, output_widgets),
        inputs_kwargs=page.widgets(list(inputs)) or None,
        outputs=list(output_widgets.values()),
        **options,
    )


def build_app(studio, config: AppConfig) -> gr.Blocks:
    handlers = Handlers(studio, config)
    page = Page()
    with gr.Blocks(title="DynamiCtrl Studio", fill_width=True) as app:
        gr.Markdown("# DynamiCtrl Studio\nOne photo of a person + a dance → that person dancing, steered by a prompt.")
        if config.tiny:
            gr.Markdown(TINY_BANNER, elem_id="tiny-banner")
        page.mask_points = gr.State([])
        page.preview_mode = gr.State("none")
        page.preview_points = gr.State([])
        page.pose_state = gr.State({})
        page.auto_caption_text = gr.State("")
        # The browser's own id, in its local storage: History survives reloads, per browser.
        page.browser_id = gr.BrowserState("", storage_key="dynamictrl-browser-id", secret=config.browser_secret)
        page.browser_tz = gr.Textbox(visible=False)
        with gr.Tabs() as page.tabs:
            with gr.Tab("Create", id="create"):
                with gr.Row(elem_id="create-columns", equal_height=False):
                    with gr.Column(scale=3, min_width=300, elem_id="inputs-column"):
                        build_character(page, config)
                        build_motion(page, config)
                        build_prompt(page)
                    with gr.Column(scale=2, min_width=300, elem_id="generate-column"):
                        build_generate(page, config, handlers)
            with gr.Tab("Lip-sync", id="lipsync"):
                build_lipsync(page)
            with gr.Tab("History", id="history") as page.history_tab:
                build_history(page)
            with gr.Tab("Models", id="models") as page.models_tab:
                build_models(page, config, handlers)
            with gr.Tab("System", id="system") as page.system_tab:
                build_system(page, config)
        wire_character(page, handlers)
        wire_motion(page, handlers)
        wire_prompt(page, handlers)
        wire_generate(page, handlers)
        wire_variations(page, handlers)
        wire_lipsync(page, handlers)
        wire_history(page, handlers)
        wire_models(page, handlers)
        wire_system(page, handlers, config)
        # The page's id and time zone reach the server before anything else it sends.
        wire(
            page,
            app.load,
            handlers.start_session,
            ["browser_id", "browser_tz"],
            ["browser_id", *HISTORY_VIEW],
            api_name=False,
            js="(id, tz) => [id, Intl.DateTimeFormat().resolvedOptions().timeZone]",
        )
    return app


# ------------------------------------------------------------------ sections
def build_character(page: Page, config: AppConfig) -> None:
    gr.Markdown("## 1. Character")
    # The photo, the crop the model sees (clicked for mask points) and the mask views side
    # by side: a click shows its effect next to it.
    with gr.Row(equal_height=False):
        with gr.Column(min_width=200):
            # The file as uploaded: dynamictrl.images reads and converts it.
            page.reference = ImageUpload(
                label="Reference image",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                elem_id="reference-image",
                height=300,
            )
            page.size_preset = gr.Dropdown(
                [*config.size_presets, CUSTOM_SIZE],
                value=config.default_size,
                label="Target size (width x height)",
                elem_id="size-preset",
            )
            with gr.Row():
                width, height = widget_spec("width"), widget_spec("height")
                page.width = gr.Number(
                    value=width.default,
                    label="Width (multiple of 16)",
                    precision=0,
                    visible=False,
                    minimum=width.minimum,
                    maximum=width.maximum,
                    step=width.step,
                )
                page.height = gr.Number(
                    value=height.default,
                    label="Height (multiple of 16)",
                    precision=0,
                    visible=False,
                    minimum=height.minimum,
                    maximum=height.maximum,
                    step=height.step,
                )
            if (ASSETS / "reference_figure.png").is_file():
                gr.Examples(
                    [[str(ASSETS / "reference_figure.png")]], inputs=[page.reference], label="Example reference"
                )
        with gr.Column(min_width=200):
            page.crop = gr.Image(
                label="Crop preview (what the model sees) · click to add mask points",
                interactive=False,
                elem_id="crop-preview",
                height=300,
            )
            page.crop_info = gr.Markdown(label="Crop note", elem_id="crop-info")
        # PNG: webp would smear the mask's edges and the point markers' colours.
        page.mask_preview = gr.Image(
            label="Mask preview (tinted = blacked out; after Person: the person)",
            interactive=False,
            elem_id="mask-preview",
            height=300,
            format="png",
            min_width=160,
        )
        page.masked_preview = gr.Image(
            label="What the model would get",
            interactive=False,
            elem_id="masked-preview",
            height=300,
            format="png",
            min_width=160,
        )
    with gr.Accordion("Mask (optional: replace the background or the clothing)", open=True):
        with gr.Row():
            page.mask_person = gr.Button("Person", elem_id="mask-person")
            page.mask_background = gr.Button("Background", elem_id="mask-background")
            page.mask_clothing = gr.Button("Clothing", elem_id="mask-clothing")
            page.clear_mask = gr.Button("Clear mask", elem_id="clear-mask")
            page.use_mask = gr.Button("Use this mask", variant="primary", elem_id="use-mask")
        page.mask_info = gr.Markdown(
            "Person / Background / Clothing only preview a mask: Person checks what SAM "
            "takes as the person; Background / Clothing show what would be blacked out "
            "(to be described in the prompt). Clicks on the crop preview refine it. "
            "**Use this mask** hands it to Generate.",
            label="Mask note",
            elem_id="mask-info",
        )
        page.click_label = gr.Radio(
            ["add (include)", "remove (exclude)"],
            value="add (include)",
            label="A click on the crop preview…",
            elem_id="click-label",
        )


def build_motion(page: Page, config: AppConfig) -> None:
    gr.Markdown("## 2. Motion")
    with gr.Row():
        with gr.Column():
            page.driving = VideoUpload(
                label="Driving video (a dance) or a ready pose video",
                sources=["upload"],
                elem_id="driving-video",
                height=260,
            )
            page.is_pose_video = gr.Checkbox(
                False, label="This is already a pose video (frame 0 = the reference's pose)", elem_id="is-pose-video"
            )
            if (ASSETS / "dance_figure.mp4").is_file():
                gr.Examples([[str(ASSETS / "dance_figure.mp4")]], inputs=[page.driving], label="Example clip")
            with gr.Row():
                start, frames, fps = (widget_spec(name, PoseSettings) for name in ("start_s", "num_frames", "fps"))
                page.start = gr.Number(start.default, label="Start (s)", minimum=start.minimum)
                page.frames = gr.Number(
                    config.default_frames,
                    label="Frames (4k+1)",
                    precision=0,
                    minimum=frames.minimum,
                    step=frames.step,
                    elem_id="frames",
                )
                page.fps = gr.Number(
                    fps.default, label="fps (0 = every frame)", minimum=fps.minimum, maximum=fps.maximum
                )
                page.whole = gr.Button("Whole clip", size="sm", elem_id="whole-clip")
            retarget = widget_spec("retarget", PoseSettings)
            page.retarget = gr.Dropdown(
                list(retarget.choices),
                value=retarget.default,
                label="Retargeting",
                info="global: the official fit · bones: limb lengths of the reference · none",
            )
            page.extract = gr.Button("Extract poses", variant="secondary", elem_id="extract-poses")
        with gr.Column():
            page.pose_video = gr.Video(label="Pose video", interactive=False, elem_id="pose-video", height=260)
            page.pose_overlay = gr.Video(
                label="Skeletons over the reference | driving video",
                interactive=False,
                elem_id="pose-overlay",
                height=260,
            )
            page.pose_info = gr.Markdown()


def build_prompt(page: Page) -> None:
    gr.Markdown("## 3. Prompt")
    with gr.Row():
        with gr.Column(scale=3):
            page.prompt = gr.Textbox(
                label="Prompt",
                lines=3,
                elem_id="prompt",
                placeholder="Describe the person and the background, or click Auto caption.",
            )
            page.negative_prompt = gr.Textbox(label="Negative prompt", lines=1)
        with gr.Column(scale=1):
            page.caption_button = gr.Button("Auto caption", elem_id="auto-caption")
            page.hint = gr.Markdown(elem_id="consistency-hint")


def build_generate(page: Page, config: AppConfig, handlers: Handlers) -> None:
    gr.Markdown("## 4. Generate")
    # First what must stay in view: the buttons, what the job will use, the preview and the result.
    with gr.Row():
        page.generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
        page.cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
    page.mask_status = gr.Markdown(mask_status_text("none", []), elem_id="mask-status")
    # Before a job starts: every model it needs that is not on disk, with one button.
    page.missing_models = gr.Markdown(visible=False, elem_id="missing-models")
    page.missing_names = gr.State([])
    page.download_missing = gr.Button("Download", visible=False, variant="primary", elem_id="download-missing")
    with gr.Row(equal_height=False):
        page.live_preview = gr.Image(
            label="Live preview",
            interactive=False,
            elem_id="live-preview",
            height=150,
            format="png",
            min_width=120,
            scale=1,
            show_label=True,
        )
        page.result_video = gr.Video(
            label="Result", interactive=False, elem_id="result-video", height=300, min_width=200, scale=2
        )
    page.preview_timer = gr.Timer(0.4, active=False)
    with gr.Row():
        page.speed = gr.Dropdown(
            [*config.speed_presets, CUSTOM_SPEED],
            value=config.default_speed,
            label="Quality / speed",
            elem_id="speed",
            min_width=160,
        )
        steps = widget_spec("steps")
        page.steps = gr.Slider(
            steps.minimum,
            steps.maximum,
            value=config.default_steps,
            step=steps.step,
            label="Steps",
            elem_id="steps",
            min_width=160,
        )
    defaults = GenerateSettings(prompt="")
    page.speed_estimate = gr.Markdown(
        handlers.speed_estimate(
            config.default_size,
            defaults.width,
            defaults.height,
            config.default_frames,
            config.default_steps,
            config.default_speed,
            defaults.guidance,
        )["speed_estimate"],
        elem_id="speed-estimate",
    )
    with gr.Row():
        page.seed = gr.Number(widget_spec("seed").default, label="Seed", precision=0, scale=4, elem_id="seed")
        page.dice = gr.Button("Random seed", scale=1, min_width=80)
    with gr.Row():
        page.mask_mode = gr.Radio(
            list(MASK_MODES),
            value="none",
            label="Mask used by Generate (what is blacked out)",
            elem_id="mask-mode",
            scale=3,
        )
        page.no_mask = gr.Button("No mask", size="sm", elem_id="no-mask", scale=1, min_width=80)
    with gr.Accordion("More settings", open=False):
        guidance = widget_spec("guidance")
        page.guidance = gr.Slider(
            guidance.minimum, guidance.maximum, value=guidance.default, step=guidance.step, label="Guidance"
        )
        page.offload = gr.Dropdown(
            list(widget_spec("offload").choices), value=config.offload, label="Offload (memory tier)"
        )
        page.preview_every = gr.Number(
            config.preview_every,
            label="Live preview every N denoising steps (0 = off)",
            precision=0,
            minimum=0,
            elem_id="preview-every",
        )
    with gr.Accordion("Variations: several seeds of these settings", open=False, elem_id="variations-accordion"):
        with gr.Row():
            page.variations = gr.Slider(
                1,
                MAX_VARIATIONS,
                value=4,
                step=1,
                label="Seeds (Seed, Seed+1, ...)",
                elem_id="variations-count",
                scale=3,
            )
            page.variations_button = gr.Button("Generate variations", elem_id="variations-run", scale=1)
        page.variations_gallery = gr.Gallery(
            label="Variations (as they finish; click one to pick it)",
            columns=4,
            height=220,
            object_fit="contain",
            elem_id="variations-gallery",
            allow_preview=False,
        )
        page.variation_pick = gr.State(None)
        with gr.Row():
            page.use_variation = gr.Button(
                "Make it the result (and its seed the Seed)", size="sm", elem_id="use-variation"
            )
            page.lipsync_variation = gr.Button("Lip-sync it", size="sm", elem_id="lipsync-variation")
    page.result_files = gr.File(label="Download (video + manifest)", file_count="multiple", interactive=False)
    with gr.Accordion("Manifest", open=False):
        page.manifest = gr.JSON(label="Manifest")


def build_lipsync(page: Page) -> None:
    lip = {
        name: widget_spec(name, LipSyncSettings)
        for name in ("bbox_shift", "extra_margin", "parsing_mode", "left_cheek_width", "right_cheek_width")
    }
    gr.Markdown(
        "Make the character speak: a video with a visible face (your result, or any clip) and "
        "speech. The output lasts as long as the speech; a shorter video plays forward and "
        "backward (MuseTalk 1.5)."
    )
    with gr.Row():
        with gr.Column():
            page.lipsync_video = VideoUpload(
                label="Video with a face", sources=["upload"], elem_id="lipsync-video", height=320
            )
            page.use_result = gr.Button("Use the latest result", size="sm", elem_id="lipsync-use-result")
            page.speech = AudioUpload(
                label="Speech (wav, mp3, flac, ogg, m4a) or record",
                type="filepath",
                sources=["upload", "microphone"],
                elem_id="lipsync-audio",
            )
            with gr.Accordion("Settings", open=False):
                spec = lip["bbox_shift"]
                page.bbox_shift = gr.Slider(
                    spec.minimum,
                    spec.maximum,
                    value=spec.default,
                    step=spec.step,
                    label="Mouth region shift (px; positive opens the mouth more)",
                )
                spec = lip["extra_margin"]
                page.extra_margin = gr.Slider(
                    spec.minimum,
                    spec.maximum,
                    value=spec.default,
                    step=spec.step,
                    label="Chin margin (px below the chin in the face crop)",
                )
                page.parsing_mode = gr.Dropdown(
                    list(lip["parsing_mode"].choices),
                    value=lip["parsing_mode"].default,
                    label="Blended region",
                    info="jaw: MuseTalk 1.5's default",
                )
                with gr.Row():
                    spec = lip["left_cheek_width"]
                    page.left_cheek = gr.Slider(
                        spec.minimum, spec.maximum, value=spec.default, step=spec.step, label="Left cheek width"
                    )
                    spec = lip["right_cheek_width"]
                    page.right_cheek = gr.Slider(
                        spec.minimum, spec.maximum, value=spec.default, step=spec.step, label="Right cheek width"
                    )
            with gr.Row():
                page.lipsync_button = gr.Button("Lip-sync", variant="primary", elem_id="lipsync-run")
                page.lipsync_cancel = gr.Button("Cancel", variant="stop")
        with gr.Column():
            page.lipsync_result = gr.Video(
                label="Lip-synced video", interactive=False, elem_id="lipsync-result", height=400
            )
            page.lipsync_report = gr.Markdown(elem_id="lipsync-report")
            page.lipsync_files = gr.File(label="Download (video + manifest)", file_count="multiple", interactive=False)


def build_history(page: Page) -> None:
    page.refresh_history = gr.Button("Refresh", elem_id="refresh-history")
    # Fixed columns and height: fit_columns would blow a lone result up to the page width.
    page.gallery = gr.Gallery(
        label="Past results",
        columns=5,
        height=280,
        object_fit="contain",
        fit_columns=False,
        allow_preview=True,
        preview=False,
        elem_id="history-gallery",
    )
    # The first column is a thumbnail (an inline image); times are the page's local time.
    page.history_table = gr.Dataframe(
        headers=HISTORY_HEADERS,
        datatype=["markdown", *["str"] * 9],
        interactive=False,
        elem_id="history-table",
        wrap=False,
    )
    page.history_paths = gr.State([])
    with gr.Row():
        page.reuse = gr.Button("Reuse (settings and inputs)", elem_id="reuse-settings")
    with gr.Accordion("Selected result's settings", open=False):
        page.history_manifest = gr.JSON(elem_id="history-manifest")
    page.history_index = gr.State(None)


def build_models(page: Page, config: AppConfig, handlers: Handlers) -> None:
    downloads = handlers._can_download()
    gr.Markdown(
        "Every model the app can use, as found on this server's disk. "
        + (
            "**Download** fetches one (resumable: a stopped download continues where it was). "
            if downloads
            else "Downloading is an admin action (off on a server reachable by others without `--auth`); "
        )
        + f"On any machine: `{catalog.COMMAND} NAME`.",
        elem_id="models-intro",
    )
    for spec in catalog.MODELS:
        with gr.Row(equal_height=True):
            setattr(page, f"model_{spec.name}", gr.HTML(handlers.model_row(spec.name), elem_id=f"model-{spec.name}"))
            if downloads:
                setattr(
                    page,
                    f"download_{spec.name}",
                    gr.Button("Download", scale=0, min_width=110, elem_id=f"download-{spec.name}"),
                )
    with gr.Row():
        page.refresh_models = gr.Button("Refresh", elem_id="refresh-models")
        if downloads:
            page.cancel_download = gr.Button("Cancel download", variant="stop", elem_id="cancel-download")


def build_system(page: Page, config: AppConfig) -> None:
    page.system_info = gr.Markdown(elem_id="system-info")
    page.models_table = gr.Dataframe(
        headers=["model", "loaded", "device", "GB", "in use", "load s"], interactive=False, elem_id="models-table"
    )
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
    wire(
        page,
        page.size_preset.change,
        handlers.size_fields,
        ["size_preset"],
        ["width", "height"],
        api_name=False,
        queue=False,
    )
    wire(
        page,
        page.reference.change,
        handlers.crop_preview,
        ["reference", *SIZE],
        ["crop", "crop_info"],
        api_name="crop_preview",
    )
    for trigger in (page.size_preset.change, page.width.submit, page.height.submit):
        wire(page, trigger, handlers.crop_preview, ["reference", *SIZE], ["crop", "crop_info"], api_name=False)
    for button, kind in (
        (page.mask_person, "person"),
        (page.mask_background, "background"),
        (page.mask_clothing, "clothing"),
    ):
        wire(
            page,
            button.click,
            functools.partial(handlers.mask_start, kind),
            ["reference", *SIZE],
            MASK_VIEW,
            api_name=f"mask_{kind}",
            concurrency_id=GPU,
        )
    wire(
        page,
        page.crop.select,
        handlers.mask_click,
        ["reference", *SIZE, "preview_mode", "click_label", "preview_points"],
        MASK_VIEW,
        api_name=False,
        concurrency_id=GPU,
    )
    wire(page, page.clear_mask.click, handlers.clear_mask, [], [*MASK_VIEW, *ACTIVE_MASK], api_name=False, queue=False)
    wire(
        page,
        page.use_mask.click,
        handlers.use_mask,
        ["preview_mode", "preview_points"],
        ACTIVE_MASK,
        api_name=False,
        queue=False,
    )


def wire_motion(page: Page, handlers: Handlers) -> None:
    wire(
        page,
        page.whole.click,
        handlers.whole_clip,
        ["driving", "start", "fps"],
        ["frames", "pose_info"],
        api_name="whole_clip",
        queue=False,
    )
    wire(
        page,
        page.extract.click,
        handlers.extract_poses,
        ["reference", *MOTION],
        ["pose_video", "pose_overlay", "pose_info", "pose_state"],
        api_name="extract_poses",
        concurrency_id=GPU,
    )


def wire_prompt(page: Page, handlers: Handlers) -> None:
    wire(
        page,
        page.caption_button.click,
        handlers.auto_caption,
        ["reference", *SIZE, "mask_mode", "mask_points"],
        ["prompt", "auto_caption_text", "hint"],
        api_name="auto_caption",
        concurrency_id=GPU,
    )
    wire(
        page,
        page.prompt.blur,
        handlers.prompt_hint,
        ["auto_caption_text", "prompt"],
        ["hint"],
        api_name=False,
        queue=False,
    )


def wire_generate(page: Page, handlers: Handlers) -> None:
    wire(page, page.speed.change, handlers.speed_preset_steps, ["speed"], ["steps"], api_name=False, queue=False)
    # `input`: the user's own changes only (a preset setting Steps must not turn the label to custom).
    wire(page, page.steps.input, handlers.speed_label, ["steps", "speed"], ["speed"], api_name=False, queue=False)
    wire(page, page.dice.click, handlers.dice, [], ["seed"], api_name=False, queue=False)
    # The presets' estimated GPU time follows the size, length, steps and guidance.
    estimate_inputs = ["size_preset", "width", "height", "frames", "steps", "speed", "guidance"]
    for name in estimate_inputs:
        wire(
            page,
            getattr(page, name).change,
            handlers.speed_estimate,
            estimate_inputs,
            ["speed_estimate"],
            api_name=False,
            queue=False,
        )
    wire(
        page,
        page.mask_mode.input,
        handlers.show_mask_status,
        ["mask_mode", "mask_points"],
        ["mask_status"],
        api_name=False,
        queue=False,
    )
    wire(page, page.no_mask.click, handlers.no_mask, [], ACTIVE_MASK, api_name=False, queue=False)
    # Armed before queuing, so a Cancel pressed while the job waits in the queue still counts;
    # the preview timer runs from the click to the job's end.
    armed = wire(page, page.generate_button.click, handlers.arm_generate, [], PREVIEW, api_name=False, queue=False)
    generate_event = wire(
        page,
        armed.then,
        handlers.generate,
        GENERATE_INPUTS,
        ["result_video", "manifest", "result_files", *MISSING_VIEW],
        api_name="generate",
        concurrency_id=GPU,
    )
    wire(
        page,
        page.preview_timer.tick,
        handlers.live_preview,
        [],
        ["live_preview"],
        api_name=False,
        queue=False,
        show_progress="hidden",
    )
    # Cancel stops the job between denoising steps (the handler raises); the page stops waiting at once.
    # Also an endpoint: API clients stop their session's running job the way the button does
    # (gradio_client's `job.cancel()` only drops a job that has not started).
    page.cancel_button.click(handlers.cancel, None, None, api_name="cancel", queue=False)
    stopped = wire(page, generate_event.then, handlers.stop_preview, [], PREVIEW, api_name=False, queue=False)
    wire(page, stopped.then, handlers.history, [], HISTORY_VIEW, api_name=False)
    wire(
        page,
        page.download_missing.click,
        handlers.download_missing,
        ["missing_names"],
        MISSING_VIEW,
        api_name=False,
        concurrency_id="download",
    )


def wire_variations(page: Page, handlers: Handlers) -> None:
    """Variations: one queue job per seed, chained, so each result shows as it finishes and
    other visitors' jobs can interleave; one Cancel stops the running seed and the rest."""
    event = wire(
        page,
        page.variations_button.click,
        handlers.arm_variations,
        ["variations", "seed"],
        ["variations_gallery", "variation_pick", *PREVIEW],
        api_name=False,
        queue=False,
    )
    for index in range(MAX_VARIATIONS):
        event = wire(
            page,
            event.success if index == 0 else event.then,
            functools.partial(handlers.variation, index),
            GENERATE_INPUTS,
            ["variations_gallery", *MISSING_VIEW],
            api_name=False,
            concurrency_id=GPU,
        )
    stopped = wire(page, event.then, handlers.stop_preview, [], PREVIEW, api_name=False, queue=False)
    wire(page, stopped.then, handlers.history, [], HISTORY_VIEW, api_name=False)
    wire(
        page,
        page.variations_gallery.select,
        handlers.pick_variation,
        [],
        ["variation_pick"],
        api_name=False,
        queue=False,
    )
    wire(
        page,
        page.use_variation.click,
        handlers.use_variation,
        ["variation_pick"],
        ["result_video", "manifest", "result_files", "seed"],
        api_name=False,
        queue=False,
    )
    wire(
        page,
        page.lipsync_variation.click,
        handlers.lipsync_variation,
        ["variation_pick"],
        ["lipsync_video", "tabs"],
        api_name=False,
        queue=False,
    )


def wire_lipsync(page: Page, handlers: Handlers) -> None:
    wire(
        page,
        page.use_result.click,
        handlers.latest_result,
        ["result_video"],
        ["lipsync_video"],
        api_name=False,
        queue=False,
    )
    armed = page.lipsync_button.click(handlers.arm_cancel, None, None, api_name=False, queue=False)
    lipsync_event = wire(
        page,
        armed.then,
        handlers.lipsync,
        ["lipsync_video", "speech", "bbox_shift", "extra_margin", "parsing_mode", "left_cheek", "right_cheek"],
        ["lipsync_result", "lipsync_report", "lipsync_files"],
        api_name="lipsync",
        concurrency_id=GPU,
    )
    page.lipsync_cancel.click(handlers.cancel, None, None, api_name=False, queue=False)
    wire(page, lipsync_event.then, handlers.history, [], HISTORY_VIEW, api_name=False)


def wire_history(page: Page, handlers: Handlers) -> None:
    wire(page, page.refresh_history.click, handlers.history, [], HISTORY_VIEW, api_name="history")
    wire(page, page.history_tab.select, handlers.history, [], HISTORY_VIEW, api_name=False)
    for table in (page.gallery, page.history_table):
        wire(
            page,
            table.select,
            handlers.history_select,
            ["history_paths"],
            ["history_manifest", "history_index"],
            api_name=False,
        )
    wire(
        page,
        page.reuse.click,
        handlers.reuse_settings,
        ["history_manifest"],
        [
            *SIZE,
            "frames",
            "fps",
            *ACTIVE_MASK,
            "prompt",
            "negative_prompt",
            "steps",
            "speed",
            "guidance",
            "seed",
            "offload",
            "tabs",
            "reference",
            "driving",
            "is_pose_video",
            "pose_state",
        ],
        api_name="reuse_settings",
    )


def wire_models(page: Page, handlers: Handlers) -> None:
    rows = [f"model_{spec.name}" for spec in catalog.MODELS]
    wire(page, page.models_tab.select, handlers.models_view, [], rows, api_name=False)
    wire(page, page.refresh_models.click, handlers.models_view, [], rows, api_name="models")
    if not handlers._can_download():
        return
    for spec in catalog.MODELS:
        # One download at a time (their own concurrency group, not the GPU's).
        wire(
            page,
            getattr(page, f"download_{spec.name}").click,
            functools.partial(handlers.download_model, spec.name),
            [],
            [f"model_{spec.name}"],
            api_name=False,
            concurrency_id="download",
        )
    page.cancel_download.click(handlers.cancel_download, None, None, api_name=False, queue=False)


def wire_system(page: Page, handlers: Handlers, config: AppConfig) -> None:
    wire(page, page.refresh_system.click, handlers.system_status, [], SYSTEM_VIEW, api_name="system_status")
    wire(page, page.system_tab.select, handlers.system_status, [], SYSTEM_VIEW, api_name=False)
    if config.admin_actions:
        wire(page, page.unload_one.click, handlers.unload, ["loaded_models"], SYSTEM_VIEW, api_name=False)
        wire(page, page.unload_everything.click, handlers.unload_all, [], SYSTEM_VIEW, api_name="unload_all")
