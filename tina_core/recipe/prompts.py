"""System prompts and the chat template Tina trains with.

The prompts are Tina's strings exactly, newlines included: the open-r1 one (used for every dataset
except open-rs) and the Open-RS one (only for datasets whose id contains "open-rs", so RS2, RS3 and
their ablations; RS1's open-s1 gets the open-r1 prompt). The doubled braces in ``\\boxed{{}}`` are
in Tina's prompt too: it was copied from a YAML file that escaped them.
"""

from __future__ import annotations

OPEN_R1_SYSTEM_PROMPT = (
    "\n"
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses.\n"
    "You first think about the reasoning process as an internal monologue and then provide the user with the answer.\n"
    "Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>\n"
)

OPEN_RS_SYSTEM_PROMPT = (
    "\n"
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\n"
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer, "
    "and put your final answer within \\boxed{{}} .\n"
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, \n"
    "i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "Note that respond by English, NOT use other languages.\n"
)

SYSTEM_PROMPTS = {"open_r1": OPEN_R1_SYSTEM_PROMPT, "open_rs": OPEN_RS_SYSTEM_PROMPT}

# open-r1's edit of the DeepSeek-R1 template, which Tina uses: the system prompt goes right after BOS,
# and the generation prompt is a bare <｜Assistant｜> with no "<think>\n" prefill, so the think block
# is part of the completion and the format rewards can see it. Tool-call turns are left out: no
# recipe uses them.
REASON_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages if message['role'] == 'system' -%}"
    "{%- set ns.system = message['content'] -%}"
    "{%- endfor -%}"
    "{{- bos_token -}}{{- ns.system -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<｜User｜>' + message['content'] -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<｜Assistant｜>' -}}{%- endif -%}"
)


def system_prompt_for(dataset_name: str, override: str | None = None) -> str | None:
    """The system prompt for a dataset, by Tina's rule, unless ``override`` says otherwise.

    ``override``: ``"open_rs"`` / ``"open_r1"`` pick a prompt, ``"none"`` means no system message,
    any other string is used as the prompt itself.
    """
    if override is None:
        return OPEN_RS_SYSTEM_PROMPT if "open-rs" in dataset_name else OPEN_R1_SYSTEM_PROMPT
    if override == "none":
        return None
    return SYSTEM_PROMPTS.get(override, override)
