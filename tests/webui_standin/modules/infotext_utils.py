"""modules.infotext_utils: writing values into infotext, parsing it back, and the paste
("send to txt2img") conversion of parsed strings into component values."""
import json
import re

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict:
    """Infotext -> {"Prompt", "Negative prompt", key: value string, "Size-1", "Size-2", ...}."""
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in re_param.findall(lastline):
        if v and v[0] == '"' and v[-1] == '"':
            v = unquote(v)
        m = re_imagesize.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    return res


def paste(fields, infotext: str) -> list:
    """What connect_paste's paste_func sends to each (component, key) of `fields`: the new
    value, or None where the component is left unchanged (gr.update() in A1111)."""
    params = parse_generation_parameters(infotext)
    res = []
    for output, key in fields:
        v = key(params) if callable(key) else params.get(key, None)
        if v is None:
            res.append(None)
            continue
        valtype = type(output.value)
        if valtype is bool and v == "False":
            res.append(False)
        elif valtype is int:
            res.append(float(v))
        else:
            try:
                res.append(valtype(v))
            except Exception:
                res.append(None)
    return res
