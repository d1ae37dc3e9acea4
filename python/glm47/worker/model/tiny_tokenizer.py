"""The tiny model's tokenizer: a byte-level BPE trained on built-in English text, the GLM special
tokens appended after the learned vocabulary, and a chat template in the GLM-4.7 format."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

# Tags the model writes in its own output: registered as plain (non-special) added tokens, as the
# real tokenizer does, so that decoding with skip_special_tokens keeps them for the output parsers.
_OUTPUT_TAG_ORDER = (
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
)
OUTPUT_TAGS = frozenset(_OUTPUT_TAG_ORDER)
# The GLM special tokens, in the real tokenizer's order; they get the ids after the BPE vocabulary.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    *_OUTPUT_TAG_ORDER,
)
EOS_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
PAD_TOKEN = "<|endoftext|>"
BPE_VOCAB_SIZE = 1200

CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still say hello to the world.
Hello, world! How are you today? I am fine, thank you. What is the weather like in Paris?
It is sunny and warm in Paris, with a light wind from the west. Tomorrow it may rain.
The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome.
Water boils at one hundred degrees Celsius at sea level, and freezes at zero degrees.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 2048 3.14 2.71 -1 +1 = 7 * 6.
def add(a, b):
    return a + b
print("hello, world")
for i in range(10):
    print(i)
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
A server answers requests from many users at once. Each request carries a prompt, and the
model writes an answer one token at a time. Short answers finish early; long ones keep going
until they reach a stop word or the length limit. The scheduler decides which requests run in
each step, and the cache keeps what the model has already read so that it never reads it twice.
Once upon a time there was a little robot who liked to count the stars. Every night it climbed
the hill behind the village and counted until the sun came up. One morning a girl asked the
robot why it counted the stars. Because nobody else does, said the robot, and someone should.
She laughed, sat down next to it, and together they counted the stars that were left.
Good morning! Good evening! Good night! Please, thank you, you are welcome, excuse me, sorry.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March,
April, May, June, July, August, September, October, November, December.
Red, orange, yellow, green, blue, indigo and violet are the colours of the rainbow.
Cats, dogs, birds, fish, horses and cows live on the farm near the river.
Think step by step. First read the question, then plan the answer, then write it down.
Tools help the assistant: it can call a function, read the result, and then answer the user.
Science asks questions about nature: why the sky is blue, how plants grow, what makes thunder.
Light from the sun scatters in the air, and blue light scatters most, so the sky looks blue.
Plants take water through their roots and sunlight through their leaves to make their food.
History remembers kings, queens, farmers, sailors, builders, painters, writers and inventors.
The library opens at nine o'clock and closes at six; children may borrow three books a week.
Mathematics studies numbers, shapes, patterns, equations, functions, proofs and probability.
If x plus three equals seven, then x equals four; if y times two equals ten, y equals five.
Music has rhythm, melody and harmony; a song may be quiet, loud, happy, sad, fast or slow.
Cooking dinner: chop onions, heat oil, add garlic, stir in tomatoes, simmer, season, serve.
Travel by train, bus, bicycle, boat or airplane; remember your ticket, passport and luggage.
Computers store information as bits; programs read input, compute results and write output.
An error message explains what went wrong: file not found, permission denied, invalid value.
Friends share stories, jokes, meals, advice and secrets, and help each other when needed.
Questions and answers: Who? What? Where? When? Why? How? Which one? How many? How much?
"""

CHAT_TEMPLATE = """\
{#- GLM-4.7 chat format: bare role tags, [gMASK]<sop> prefix, XML-style tool calls. -#}
{%- macro text_of(content) -%}
  {%- if content is string -%}{{ content }}
  {%- elif content is iterable and content is not mapping -%}
    {%- for part in content -%}
      {%- if part is mapping and part.type == 'text' -%}{{ part.text }}
      {%- elif part is string -%}{{ part }}
      {%- endif -%}
    {%- endfor -%}
  {%- else -%}{{ content }}
  {%- endif -%}
{%- endmacro -%}
{{- '[gMASK]<sop>' -}}
{%- if tools -%}
  {{- '<|system|>\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' -}}
  {{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\\n' -}}
  {%- for tool in tools -%}{{ tool | tojson(ensure_ascii=False) }}{{ '\\n' }}{%- endfor -%}
  {{- '</tools>\\n\\nFor each function call, output the function name and arguments within the following XML format:\\n' -}}
  {{- '<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value>' -}}
  {{- '<arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>' -}}
{%- endif -%}
{%- set state = namespace(last_user=-1) -%}
{%- for m in messages -%}
  {%- if m.role == 'user' -%}{%- set state.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}
    {{- '<|system|>' }}{{ text_of(m.content) -}}
  {%- elif m.role == 'user' -%}
    {{- '<|user|>' }}{{ text_of(m.content) -}}
  {%- elif m.role == 'assistant' -%}
    {%- set body = text_of(m.content) -%}
    {%- set thought = '' -%}
    {%- if m.reasoning_content is string -%}
      {%- set thought = m.reasoning_content -%}
    {%- elif '</think>' in body -%}
      {%- set thought = body.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}
      {%- set body = body.split('</think>')[-1].lstrip('\\n') -%}
    {%- endif -%}
    {{- '<|assistant|>' -}}
    {%- set keep = (clear_thinking is defined and not clear_thinking) or loop.index0 > state.last_user -%}
    {%- if keep and thought -%}
      {{- '<think>' + thought.strip() + '</think>' -}}
    {%- else -%}
      {{- '</think>' -}}
    {%- endif -%}
    {{- body.strip() -}}
    {%- for call in (m.tool_calls or []) -%}
      {%- set fn = call.function if call.function else call -%}
      {{- '<tool_call>' + fn.name -}}
      {%- for key, value in fn.arguments.items() -%}
        {{- '<arg_key>' + key + '</arg_key><arg_value>' -}}
        {{- value if value is string else value | tojson(ensure_ascii=False) -}}
        {{- '</arg_value>' -}}
      {%- endfor -%}
      {{- '</tool_call>' -}}
    {%- endfor -%}
  {%- elif m.role == 'tool' -%}
    {%- if m.content is string -%}
      {%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|observation|>' -}}{%- endif -%}
      {{- '<tool_response>' + m.content + '</tool_response>' -}}
    {%- else -%}
      {{- '<|observation|>' -}}
      {%- for result in m.content -%}
        {{- '<tool_response>' }}{{ result.output if result.output is defined else result }}{{ '</tool_response>' -}}
      {%- endfor -%}
    {%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|assistant|>' + ('</think>' if (enable_thinking is defined and not enable_thinking) else '<think>') -}}
{%- endif -%}
"""


def train_tokenizer() -> Tokenizer:
    """Deterministic: the same corpus and settings always give the same tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    for token in SPECIAL_TOKENS:  # one at a time, so ids follow SPECIAL_TOKENS' order
        special = token not in OUTPUT_TAGS
        tokenizer.add_tokens([AddedToken(token, special=special, normalized=False)])
    return tokenizer
