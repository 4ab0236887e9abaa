"""LLaVA's conversation templates, ported: ``vicuna_v1`` (Llama/Vicuna LLaVA-1.5 models: Quilt-LLaVA,
PathGen-LLaVA) and ``mistral_instruct`` (LLaVA-Med v1.5 Mistral).

Each template exists twice and the tests check both against the prompts LLaVA's own
``llava.conversation.Conversation.get_prompt`` builds (``tests/reference/llava_reference.json``):

- :func:`render` builds the prompt string in Python (the reference for the Jinja form);
- :func:`chat_template` gives the same text as a Jinja chat template for the processor, with the
  assistant turns inside ``{% generation %}`` so TRL's assistant-only loss trains the answer and its ``</s>``.

How LLaVA builds them (``llava/conversation.py``, v1.2.2.post1; LLaVA-Med's ``mistral_instruct`` is the same):

- ``vicuna_v1`` (``SeparatorStyle.TWO``, sep ``" "``, sep2 ``"</s>"``):
  ``SYSTEM USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:``
- ``mistral_instruct`` (``SeparatorStyle.LLAMA_2``, system ``""``, sep ``""``, sep2 ``"</s>"``):
  ``[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\n<image>\\nQ1 [/INST] A1 </s>[INST] Q2 [/INST]`` (the ``<<SYS>>``
  block only when a system prompt is set).

The image goes before the text of the first user turn as ``<image>\\n`` (``<im_start><image><im_end>\\n`` for
checkpoints trained with ``mm_use_im_start_end``), as LLaVA's CLI and ``model_vqa`` place it.
"""
from __future__ import annotations

from dataclasses import dataclass

from pathvlm.errors import PathVLMError

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


@dataclass(frozen=True)
class LlavaTemplate:
    name: str
    default_system: str
    description: str


TEMPLATES = {
    "vicuna_v1": LlavaTemplate("vicuna_v1", VICUNA_SYSTEM, "LLaVA-1.5 on Vicuna/Llama (Quilt-LLaVA, PathGen-LLaVA)"),
    "mistral_instruct": LlavaTemplate("mistral_instruct", "", "LLaVA on Mistral-Instruct (LLaVA-Med v1.5)"),
}
# LLaVA picks the template from the model name; pathvlm from the checkpoint's model_type (overridable)
DEFAULT_TEMPLATE = {"llama": "vicuna_v1", "mistral": "mistral_instruct"}


def get_template(name: str) -> LlavaTemplate:
    if name not in TEMPLATES:
        raise PathVLMError(f"unknown LLaVA conversation template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def image_marker(im_start_end: bool = False) -> str:
    return "<im_start><image><im_end>" if im_start_end else "<image>"


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if p.get("type") == "text")


def _user_text(content, marker: str) -> str:
    if isinstance(content, str):
        return content
    out = []
    for p in content:
        if p.get("type") == "image":
            out.append(marker + "\n")
        elif p.get("type") == "text":
            out.append(p.get("text") or "")
    return "".join(out)


def render(name: str, messages: list[dict], add_generation_prompt: bool = True, im_start_end: bool = False) -> str:
    """The prompt LLaVA's ``Conversation.get_prompt`` builds for ``messages`` (OpenAI-style, image parts placed)."""
    tpl = get_template(name)
    marker = image_marker(im_start_end)
    system = tpl.default_system
    turns = []
    for m in messages:
        if m["role"] == "system":
            system = _text(m["content"])
        elif m["role"] == "user":
            turns.append(("user", _user_text(m["content"], marker)))
        else:
            turns.append(("assistant", _text(m["content"])))
    if name == "vicuna_v1":
        out = system + " "
        for role, text in turns:
            out += f"USER: {text} " if role == "user" else f"ASSISTANT: {text}</s>"
        return out + ("ASSISTANT:" if add_generation_prompt else "")
    out = ""
    for i, (role, text) in enumerate(turns):
        if i == 0 and system:
            text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
        out += f"[INST] {text} [/INST]" if role == "user" else f" {text} </s>"
    return out


_JINJA_TEXT = ("{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}{%- for p in m['content'] -%}"
               "{%- if p['type'] == 'text' -%}{{- p['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}")


def _jinja_user(marker: str) -> str:
    return ("{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}{%- for p in m['content'] -%}"
            "{%- if p['type'] == 'image' -%}{{- '" + marker + "\\n' -}}"
            "{%- elif p['type'] == 'text' -%}{{- p['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}")


def chat_template(name: str, im_start_end: bool = False) -> str:
    """The Jinja form of :func:`render` (identical text), for ``processor.chat_template``."""
    tpl = get_template(name)
    marker = image_marker(im_start_end)
    system = tpl.default_system.replace("'", "\\'")
    head = ("{%- set ns = namespace(system='" + system + "') -%}"
            "{%- for m in messages if m['role'] == 'system' -%}{%- if m['content'] is string -%}"
            "{%- set ns.system = m['content'] -%}{%- else -%}"
            "{%- set ns.system = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
            "{%- endif -%}{%- endfor -%}")
    if name == "vicuna_v1":
        body = ("{{- ns.system + ' ' -}}"
                "{%- for m in messages if m['role'] != 'system' -%}"
                "{%- if m['role'] == 'user' -%}{{- 'USER: ' -}}" + _jinja_user(marker) + "{{- ' ' -}}"
                "{%- else -%}{{- 'ASSISTANT:' -}}{%- generation -%}{{- ' ' -}}" + _JINJA_TEXT
                + "{{- '</s>' -}}{%- endgeneration -%}{%- endif -%}{%- endfor -%}"
                "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}")
    else:
        body = ("{%- for m in messages if m['role'] != 'system' -%}"
                "{%- if m['role'] == 'user' -%}{{- '[INST] ' -}}"
                "{%- if loop.first and ns.system -%}{{- '<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n' -}}{%- endif -%}"
                + _jinja_user(marker) + "{{- ' [/INST]' -}}"
                "{%- else -%}{%- generation -%}{{- ' ' -}}" + _JINJA_TEXT + "{{- ' </s>' -}}{%- endgeneration -%}"
                "{%- endif -%}{%- endfor -%}")
    return head + body
