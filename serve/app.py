"""The web app (gradio): chat with the reasoner, zero-shot classification, gallery search, reports.

Every handler calls :class:`pathvlm.serving.service.PathVLMService`, the same object the HTTP API
uses, so both share its limits and queues. Errors reach the user as ``gr.Error`` messages.

Handlers that wait for the service run it on a worker (:func:`in_background`) and yield a no-op
update every second meanwhile: gradio closes a handler's generator at the next yield once its
client has gone, and closing cancels the request, waiting or running.
"""
from __future__ import annotations

import queue
import re
import tempfile
import threading
import time
from pathlib import Path

from pathvlm.cancel import CancelToken, cancel_scope
from pathvlm.errors import PathVLMError
from pathvlm.serving.service import PathVLMService
from pathvlm.serving.thinking import ThinkSplitter

TYPED = "(type class names)"
DEFAULT_CLASSES = "tumour epithelium, stroma, lymphocytes, adipose tissue, normal mucosa"
EXAMPLE_PROMPTS = [
    "What tissue is shown in this patch?",
    "Is there evidence of malignancy? Answer yes or no and explain.",
    "Describe the architecture and the nuclei.",
    "Which stain was used, H&E or IHC?",
]
EXAMPLE_QUERIES = [
    "nests of tumour cells with large pleomorphic nuclei",
    "stratified squamous epithelium of the skin",
    "brown DAB immunohistochemical staining",
]
CSS = """
#chatbot {min-height: 420px}
footer {display: none !important}
"""


HEARTBEAT_S = 1.0
PENDING = object()  # what in_background yields while the work has nothing new


def in_background(produce):
    """Run the generator function ``produce`` on a thread inside a cancel scope; yield its items, or
    :data:`PENDING` every :data:`HEARTBEAT_S` seconds while there is none. Its errors are raised here.
    Closing this generator before the end (gradio does when the client has gone) cancels the work."""
    token, q = CancelToken(), queue.Queue()

    def run():
        try:
            with cancel_scope(token):
                for item in produce():
                    q.put(("item", item))
                    if token.cancelled:
                        break
        except BaseException as e:  # raised again in the handler's thread
            q.put(("error", e))
        finally:
            q.put(("end", None))

    threading.Thread(target=run, daemon=True, name="pathvlm-web-request").start()
    finished = False
    try:
        while True:
            try:
                kind, value = q.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                yield PENDING
                continue
            if kind == "item":
                yield value
                continue
            finished = True
            if kind == "error":
                raise value
            return
    finally:
        if not finished:
            token.cancel("disconnected")


def wait_for(fn, n_outputs: int):
    """``result = yield from wait_for(fn, n)``: call ``fn`` in the background, yielding skips for ``n``
    outputs while it runs, so that the request is cancelled if the client goes away."""
    gr = _gr()
    for item in in_background(lambda: iter([fn()])):
        if item is PENDING:
            yield tuple(gr.skip() for _ in range(n_outputs)) if n_outputs > 1 else gr.skip()
        else:
            return item


def domain_banner(verdict: dict | None) -> str:
    """The web app's banner for an image outside the model's training domain ("" when in domain or unchecked)."""
    if not verdict or not verdict.get("warning"):
        return ""
    return f"⚠️ **Outside the training domain.** {verdict['warning']}"


def _gr():
    from pathvlm.imports import require_package

    return require_package("gradio", extra="serve")


def _content_text(content) -> str:
    """A chat message's text, whether gradio gives a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, (list, tuple)):
        return "".join(_content_text(p) for p in content)
    return ""


def history_to_messages(history: list) -> list[dict]:
    """The chatbot's history as reasoner messages: user questions and assistant answers (no reasoning)."""
    out = []
    for m in history:
        m = m if isinstance(m, dict) else {"role": getattr(m, "role", None), "content": getattr(m, "content", None),
                                           "metadata": getattr(m, "metadata", None)}
        if (m.get("metadata") or {}).get("title"):
            continue  # a reasoning block: shown to the user, not fed back to the model
        text = _content_text(m.get("content")).strip()
        if m.get("role") in ("user", "assistant") and text:
            out.append({"role": m["role"], "content": text})
    return out


def _caption(hit: dict) -> str:
    meta = hit.get("metadata", {})
    src = meta.get("source_package") or Path(hit["path"]).parent.name or "gallery"
    where = f" x{meta['x']} y{meta['y']}" if "x" in meta and "y" in meta else ""
    return f"#{hit['rank']}  {hit['score']:.3f}  ·  {src}{where}"


def _hit_rows(hits: list[dict]) -> list[list]:
    rows = []
    for h in hits:
        m = h.get("metadata", {})
        rows.append([h["rank"], round(h["score"], 4), h["path"], m.get("source_package", ""), m.get("source_file", ""),
                     m.get("stain", ""), m.get("organ") or "", m.get("licence", "")])
    return rows


HIT_HEADERS = ["rank", "score", "tile", "package", "source file", "stain", "organ", "licence"]


def build_ui(service: PathVLMService):
    gr = _gr()
    import pandas as pd

    from pathvlm.zeroshot import list_prompt_sets

    def fail(e: Exception):
        return gr.Error(str(e), print_exception=False)

    has_reasoner = service.generator is not None
    has_index = service.index is not None
    no_reasoner_note = (
        "**The reasoner is off on this server** (`--reasoner none`, or the default `pathvlm-nano` is not installed). "
        "Chat and reports need it: "
        "start `pathvlm serve --reasoner pathvlm-nano` (or a model folder, or `--backend-url`). "
        "Classification and retrieval work."
    )

    # ------------------------------------------------------------------ chat handlers
    def add_user_message(text, history, image_path):
        if not has_reasoner:
            raise fail(PathVLMError(no_reasoner_note.replace("**", "").replace("`", "")))
        history = list(history or [])
        if not text or not text.strip():
            gr.Warning("empty message: type a question about the patch")
            return "", history  # nothing to answer: respond() sees no new question
        if not history_to_messages(history) and image_path is None:
            gr.Warning("No image attached: the question is asked without a patch.")
        history.append({"role": "user", "content": text.strip()})
        return "", history

    def respond(history, image_path, system=""):
        history = list(history or [])
        messages = history_to_messages(history)
        if not messages or messages[-1]["role"] != "user":
            yield gr.skip(), gr.skip(), gr.skip()  # no new question (an empty message was refused)
            return
        if system and system.strip():  # else the model's own default (e.g. Patho-R1's <think>/<answer> prompt)
            messages = [{"role": "system", "content": system.strip()}] + messages
        try:
            image = service.image_from_path(image_path) if image_path is not None else None
        except PathVLMError as e:
            raise fail(e) from None

        def produce():  # runs on a worker: evidence search, then the answer's pieces
            if image is not None and has_index:
                hits = service.search_image(image, k=4)
                yield "evidence", [(h["image_path"], _caption(h)) for h in hits]
            stream = service.chat_stream([image] if image is not None else [], messages)
            try:
                for n, piece in enumerate(stream):
                    if n == 0:
                        yield "domain", domain_banner(stream.domain)
                    yield "piece", piece
            finally:
                stream.close()

        evidence, banner = [], ""
        splitter = ThinkSplitter()
        reasoning_msg = answer_msg = None
        started = time.monotonic()
        yield history, evidence, banner
        try:
            for item in in_background(produce):
                if item is PENDING:
                    yield gr.skip(), gr.skip(), gr.skip()
                    continue
                kind, value = item
                if kind == "evidence":
                    evidence = value
                    yield history, evidence, banner
                    continue
                if kind == "domain":
                    banner = value
                    yield history, evidence, banner
                    continue
                for channel, text in splitter.feed(value):
                    if channel == "reasoning":
                        if reasoning_msg is None:
                            # "done" from the start: the accordion is created closed (gradio opens "pending" ones
                            # and keeps them open), so the reasoning streams in collapsed under its title
                            reasoning_msg = {"role": "assistant", "content": "",
                                             "metadata": {"title": "Reasoning (thinking…)", "status": "done"}}
                            history.append(reasoning_msg)
                        reasoning_msg["content"] += text
                    else:
                        if answer_msg is None:
                            answer_msg = {"role": "assistant", "content": ""}
                            history.append(answer_msg)
                        answer_msg["content"] += text
                yield history, evidence, banner
        except PathVLMError as e:
            raise fail(e) from None
        for channel, text in splitter.flush():
            target = reasoning_msg if channel == "reasoning" and reasoning_msg is not None else answer_msg
            if target is None:
                target = answer_msg = {"role": "assistant", "content": ""}
                history.append(answer_msg)
            target["content"] += text
        if reasoning_msg is not None:
            reasoning_msg["metadata"] = {"title": "Reasoning", "status": "done",
                                         "duration": round(time.monotonic() - started, 1)}
            reasoning_msg["content"] = reasoning_msg["content"].strip()
        if answer_msg is None:
            history.append({"role": "assistant", "content": "(no answer)"})
        else:
            answer_msg["content"] = answer_msg["content"].strip() or "(no answer)"
        yield history, evidence, banner

    def drop_last_answer(history):
        history = list(history or [])
        while history and (history[-1].get("role") if isinstance(history[-1], dict) else history[-1].role) == "assistant":
            history.pop()
        if not history:
            raise fail(PathVLMError("nothing to regenerate: ask a question first"))
        return history

    # ------------------------------------------------------------------ other tabs
    def classify(image_path, preset, labels, top_k):
        try:
            image = service.image_from_path(image_path)
            use_preset = preset if preset and preset != TYPED else None
            r = yield from wait_for(lambda: service.classify(image, labels=None if use_preset else labels,
                                                             preset=use_preset, top_k=int(top_k)), 4)
        except PathVLMError as e:
            raise fail(e) from None
        probs = r["probabilities"]
        order = sorted(probs, key=probs.get, reverse=True)[: max(1, int(top_k))]
        df = pd.DataFrame({"class": order, "probability": [probs[c] for c in order]})
        table = [[c, f"{probs[c]:.4f}"] for c in order]
        yield (df, table, f"**Prediction: {r['prediction']}** ({probs[r['prediction']]:.1%}) · task `{r['task']}` · "
                          f"model `{r['model']}`", domain_banner(r.get("domain")))

    def search_text(query, k):
        try:
            hits = yield from wait_for(lambda: service.search_text(query, int(k)), 3)
        except PathVLMError as e:
            raise fail(e) from None
        yield [(h["image_path"], _caption(h)) for h in hits], _hit_rows(hits), ""

    def search_image(image_path, k):
        try:
            image = service.image_from_path(image_path)
            hits, verdict = yield from wait_for(lambda: service.search_image_checked(image, int(k)), 3)
        except PathVLMError as e:
            raise fail(e) from None
        yield [(h["image_path"], _caption(h)) for h in hits], _hit_rows(hits), domain_banner(verdict)

    report_dir = Path(tempfile.gettempdir()) / "pathvlm-reports"

    def make_report(image_path):
        try:
            image = service.image_from_path(image_path)
            r = yield from wait_for(lambda: service.report(image), 3)
        except PathVLMError as e:
            raise fail(e) from None
        text = re.sub(r"</?(think|answer)>", "", r.text if r.text.lstrip().startswith("#") else r.answer or r.text).strip()
        if not text.startswith("# "):  # a remote backend's sections: give them the title and the caveat
            text = (f"# Pathology report (pathvlm)\n\n_Model: {service.reasoner_name}. Research use only; "
                    f"not a diagnosis._\n\n{text}")
        md = text + "\n"
        report_dir.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkstemp(prefix="report-", suffix=".md", dir=report_dir)[1])
        out.write_text(md)
        yield md, str(out), domain_banner(r.domain)

    # ------------------------------------------------------------------ layout
    lim = service.limits
    gen_limit = lim.generate_concurrency + lim.generate_max_waiting
    emb_limit = lim.embed_concurrency + lim.embed_max_waiting
    with gr.Blocks(title="pathvlm") as demo:
        gr.Markdown(
            f"## pathvlm — pathology vision-language\nPathCLIP `{service.clip_name}` · reasoner "
            f"`{service.reasoner_name or 'off'}` · gallery {service.index.info['count'] if has_index else 0} tiles. "
            "Research use only; not for diagnosis."
        )
        with gr.Tab("Chat", id="chat"):
            if not has_reasoner:
                gr.Markdown(no_reasoner_note, elem_id="no-reasoner")
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    chat_image = gr.Image(label="Patch (upload or paste)", type="filepath", sources=["upload", "clipboard"],
                                          height=260, elem_id="chat-image")
                    evidence = gr.Gallery(label="Similar cases in the gallery (evidence)", columns=2, height=300,
                                          elem_id="chat-evidence", visible=has_index)
                with gr.Column(scale=2):
                    chat_domain = gr.Markdown(elem_id="chat-domain")
                    chatbot = gr.Chatbot(label="PathVLM", height=460, elem_id="chatbot", buttons=["copy"])
                    msg = gr.Textbox(placeholder="Ask about the patch, then press Enter", show_label=False,
                                     elem_id="chat-input", interactive=has_reasoner, lines=1)
                    with gr.Row():
                        send = gr.Button("Send", variant="primary", elem_id="chat-send", interactive=has_reasoner)
                        regen = gr.Button("Regenerate", elem_id="chat-regenerate", interactive=has_reasoner)
                        clear = gr.Button("Clear", elem_id="chat-clear")
                    gr.Examples(EXAMPLE_PROMPTS, inputs=msg, label="Example questions")
                    with gr.Accordion("System prompt (optional)", open=False):
                        default_system = getattr(getattr(service.generator, "reasoner", None), "default_system", None)
                        system = gr.Textbox(placeholder=default_system or "none: the model's own behaviour",
                                            show_label=False, lines=2, max_lines=8, elem_id="chat-system",
                                            info="Sent as the system message; empty = the model's default"
                                                 + (" (shown above)" if default_system else ""))
            for trigger in (msg.submit, send.click):
                trigger(add_user_message, [msg, chatbot, chat_image], [msg, chatbot]).success(
                    respond, [chatbot, chat_image, system], [chatbot, evidence, chat_domain], concurrency_limit=gen_limit,
                    concurrency_id="generate")
            regen.click(drop_last_answer, [chatbot], [chatbot]).success(
                respond, [chatbot, chat_image, system], [chatbot, evidence, chat_domain], concurrency_limit=gen_limit,
                concurrency_id="generate")
            clear.click(lambda: ([], [], "", ""), None, [chatbot, evidence, msg, chat_domain], queue=False)
            chat_image.change(lambda: ([], [], ""), None, [chatbot, evidence, chat_domain], queue=False)

        with gr.Tab("Classify", id="classify"):
            with gr.Row():
                with gr.Column(scale=1):
                    cls_image = gr.Image(label="Patch", type="filepath", sources=["upload", "clipboard"], height=260,
                                         elem_id="cls-image")
                    preset = gr.Dropdown([TYPED] + list_prompt_sets(), value=TYPED, label="Preset task or typed classes",
                                         elem_id="cls-preset")
                    labels = gr.Textbox(DEFAULT_CLASSES, label="Class names (comma-separated; 'name|synonym' adds synonyms)",
                                        elem_id="cls-labels")
                    top_k = gr.Slider(1, 20, value=10, step=1, label="Classes to show")
                    cls_btn = gr.Button("Classify", variant="primary", elem_id="cls-run")
                with gr.Column(scale=2):
                    cls_domain = gr.Markdown(elem_id="cls-domain")
                    cls_summary = gr.Markdown(elem_id="cls-summary")
                    bars = gr.BarPlot(x="class", y="probability", title="Zero-shot probabilities", sort="-y",
                                      y_lim=[0, 1], elem_id="cls-bars", height=320)
                    cls_table = gr.Dataframe(headers=["class", "probability"], elem_id="cls-table", interactive=False)
            cls_btn.click(classify, [cls_image, preset, labels, top_k], [bars, cls_table, cls_summary, cls_domain],
                          concurrency_limit=emb_limit, concurrency_id="embed")

        with gr.Tab("Retrieval", id="retrieval"):
            if not has_index:
                gr.Markdown("**No gallery on this server** (started with `--gallery none`).")
            with gr.Row():
                query = gr.Textbox(label="Text query", placeholder="e.g. tumour nests with mitoses", elem_id="search-text",
                                   scale=4)
                k = gr.Slider(1, min(32, lim.max_k), value=8, step=1, label="k", scale=1)
                search_btn = gr.Button("Search", variant="primary", elem_id="search-run", scale=1)
            gr.Examples(EXAMPLE_QUERIES, inputs=query, label="Example queries")
            with gr.Accordion("Search by image (similar cases)", open=False):
                with gr.Row():
                    q_image = gr.Image(label="Query patch", type="filepath", sources=["upload", "clipboard"], height=200,
                                       elem_id="search-image")
                    img_btn = gr.Button("Find similar", elem_id="search-image-run")
            search_domain = gr.Markdown(elem_id="search-domain")
            results = gr.Gallery(label="Results (rank, cosine score, provenance)", columns=4, height=520,
                                 elem_id="search-results")
            hit_table = gr.Dataframe(headers=HIT_HEADERS, elem_id="search-table", interactive=False)
            for trigger in (query.submit, search_btn.click):
                trigger(search_text, [query, k], [results, hit_table, search_domain], concurrency_limit=emb_limit,
                        concurrency_id="embed")
            img_btn.click(search_image, [q_image, k], [results, hit_table, search_domain], concurrency_limit=emb_limit,
                          concurrency_id="embed")

        with gr.Tab("Report", id="report"):
            if not has_reasoner:
                gr.Markdown(no_reasoner_note)
            with gr.Row():
                with gr.Column(scale=1):
                    rep_image = gr.Image(label="Patch", type="filepath", sources=["upload", "clipboard"], height=260,
                                         elem_id="report-image")
                    rep_btn = gr.Button("Write report", variant="primary", elem_id="report-run", interactive=has_reasoner)
                    rep_file = gr.File(label="Download (.md)", elem_id="report-file")
                with gr.Column(scale=2):
                    rep_domain = gr.Markdown(elem_id="report-domain")
                    rep_md = gr.Markdown(elem_id="report-text")
            rep_btn.click(make_report, [rep_image], [rep_md, rep_file, rep_domain], concurrency_limit=gen_limit,
                          concurrency_id="generate")
    demo.queue(max_size=2 * (gen_limit + emb_limit))
    return demo
