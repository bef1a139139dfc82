"""Language names as clients send them (``English``, ``中文``, ``zh-CN``) → the codes adapters
take (``en``, ``zh``).

FunASR's clients pass names (``language="中文"``), OpenAI's and vLLM's pass ISO 639-1 codes,
sometimes with a region. Each family still decides which codes it honours
(``Family.languages``); families without a table detect the language themselves.
"""

from __future__ import annotations

AUTO = "auto"

# code -> names (lower case) that mean it
_NAMES: dict[str, tuple[str, ...]] = {
    "zh": ("chinese", "mandarin", "中文", "汉语", "漢語", "普通话", "國語", "国语", "华语"),
    "en": ("english", "英文", "英语", "英語"),
    "ja": ("japanese", "日文", "日语", "日語", "日本語"),
    "ko": ("korean", "韩文", "韩语", "韓語", "한국어"),
    "yue": ("cantonese", "粤语", "粵語", "广东话"),
    "de": ("german", "deutsch", "德语"),
    "fr": ("french", "français", "法语"),
    "es": ("spanish", "español", "西班牙语"),
    "ru": ("russian", "русский", "俄语"),
    "it": ("italian", "italiano"),
    "pt": ("portuguese", "português"),
    "ar": ("arabic", "阿拉伯语"),
    "vi": ("vietnamese", "tiếng việt", "越南语"),
    "th": ("thai", "泰语"),
    "id": ("indonesian", "印尼语"),
}
_BY_NAME = {name: code for code, names in _NAMES.items() for name in names}


def normalize(value: str | None) -> str | None:
    """The code for a language name or code; None for empty or ``auto``. Unknown values
    come back stripped (the family's own check then names what it accepts).

    >>> normalize("English"), normalize("中文"), normalize("zh-CN"), normalize("auto")
    ('en', 'zh', 'zh', None)
    """
    if value is None:
        return None
    text = value.strip()
    key = text.lower()
    if not key or key == AUTO:
        return None
    if key in _BY_NAME:
        return _BY_NAME[key]
    base = key.replace("_", "-").split("-")[0]
    if base in _NAMES:  # a code, maybe with a region (zh-CN, en_US)
        return base
    return text
