"""Random-access sources (grain) yielding one record dict per example.

Record: `id`, `file` (the annotation file, for errors), `task`, `turns` [[user, reply], ...]
(the first user text holds exactly one `<image>` marker), `question` (the first user text
without the marker), `answer`, `answers` (list), and the image as one of `image` (uint8
`[H, W, 3]`), `image_path` or `image_b64`; `load_image(record)` decodes it.

Sources:
- `SyntheticSource`: a TFDS data source of the built-in suite.
- `LlavaConversationSource`: LLaVA conversation json / jsonl (`id`, `image` relative to an
  image folder, `conversations` [{from: human|gpt, value}]).
- `VQAEvalSource`: LLaVA-style evaluation jsonl (GQA / TextVQA / POPE ...): `question_id`,
  `image`, `text` or `question`, and `answer` / `answers` / `label` (optional), `category`.
- `MMBenchSource`: MMBench TSV (index, question, hint, A-D, answer, category, image as base64).

Bad input (missing image, no `<image>` marker, malformed conversation) raises `DataError`
naming the sample id and file, or with `on_error="skip"` is dropped and counted in
`source.skipped` (reason -> count, also logged). Corrupt images and too-long samples surface
when the pipeline decodes / tokenizes them, under the same policy.
"""

from __future__ import annotations

import base64
import collections
import csv
import functools
import io
import json
import logging
import os
from typing import Any

import numpy as np
from PIL import Image

from vlm_jax.data.tokenizer import IMAGE_TOKEN

ON_ERROR = ("raise", "skip")


class DataError(ValueError):
    """A bad sample: `reason` (missing_image, corrupt_image, no_image_marker, bad_format,
    too_long), the sample id and the file it came from."""

    def __init__(self, reason: str, sample_id: Any, file: str, detail: str):
        super().__init__(f"sample {sample_id!r} in {file}: {detail} [{reason}]")
        self.reason, self.sample_id, self.file = reason, sample_id, file


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def load_image(record: dict) -> np.ndarray:
    """uint8 `[H, W, 3]` RGB image of a record; DataError if missing or undecodable."""
    if record.get("image") is not None:
        return np.asarray(record["image"], np.uint8)
    path, b64 = record.get("image_path"), record.get("image_b64")
    if path is not None and not os.path.isfile(path):
        raise DataError("missing_image", record["id"], record["file"], f"no image file {path}")
    try:
        src = path if path is not None else io.BytesIO(base64.b64decode(b64))
        with Image.open(src) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises several types for truncated / garbage files
        where = path or "its base64 image"
        raise DataError("corrupt_image", record["id"], record["file"],
                        f"cannot decode {where}: {type(e).__name__}: {e}") from None


class _ListSource:
    """A validated list of records; bad ones raise or are skipped and counted."""

    def __init__(self, file: str, on_error: str):
        check_on_error(on_error)
        self.file, self.on_error = file, on_error
        self.skipped: collections.Counter = collections.Counter()
        self._items: list[dict] = []

    def _add(self, make, record, *args) -> None:
        """Adds `make(record, *args)`; `record` may be a DataError from `read_json_records`."""
        try:
            if isinstance(record, DataError):
                raise record
            self._items.append(make(record, *args))
        except DataError as e:
            if self.on_error == "raise":
                raise
            self.skipped[e.reason] += 1
            logging.warning("skipping %s", e)

    def _report(self) -> None:
        if self.skipped:
            logging.warning("%s: skipped %d sample(s): %s", self.file,
                            sum(self.skipped.values()), dict(self.skipped))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict:
        return dict(self._items[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.file!r}, {len(self)} records)"


def read_json_records(path: str) -> list[dict | DataError]:
    """A json list or a jsonl file of objects. A jsonl line that is not a JSON object comes
    back as a `DataError` naming its line (1-based), for the source's `on_error` policy."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no annotation file {path!r}")
    with open(path) as f:
        if not path.endswith(".jsonl"):
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column "
                                 f"{e.colno})") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"{path}: expected a list of objects (json) or one object per "
                                 "line (jsonl)")
            return rows
        rows = []
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # columns within this line
            except json.JSONDecodeError as e:
                row = DataError("bad_format", f"line {lineno}", path,
                                f"not valid JSON ({e.msg} at column {e.colno})")
            if not isinstance(row, (dict, DataError)):
                row = DataError("bad_format", f"line {lineno}", path,
                                f"a {type(row).__name__}, not a JSON object")
            rows.append(row)
    return rows


def _image_path(folder: str, rel: Any, sid: Any, file: str) -> str:
    if not isinstance(rel, str) or not rel:
        raise DataError("missing_image", sid, file, "no `image` field (text-only samples are "
                        "not supported: every prompt holds V image placeholders)")
    path = os.path.join(folder, rel)
    if not os.path.isfile(path):
        raise DataError("missing_image", sid, file, f"no image file {path}")
    return path


class LlavaConversationSource(_ListSource):
    """LLaVA conversation data over a local image folder."""

    def __init__(self, path: str, image_folder: str, on_error: str = "raise",
                 task: str = "llava"):
        super().__init__(path, on_error)
        self.task = task
        for k, rec in enumerate(read_json_records(path)):
            self._add(self._record, rec, k, image_folder)
        self._report()

    def _record(self, rec: dict, k: int, folder: str) -> dict:
        sid = rec.get("id", f"#{k}")
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv or len(conv) % 2:
            raise DataError("bad_format", sid, self.file,
                            "`conversations` must be a non-empty list of human/gpt pairs")
        turns = []
        for j in range(0, len(conv), 2):
            h, g = conv[j], conv[j + 1]
            if (not isinstance(h, dict) or not isinstance(g, dict) or h.get("from") != "human"
                    or g.get("from") != "gpt" or not isinstance(h.get("value"), str)
                    or not isinstance(g.get("value"), str)):
                raise DataError("bad_format", sid, self.file,
                                f"turns {j}, {j + 1} are not a human then a gpt message")
            turns.append([h["value"], g["value"]])
        n_first = turns[0][0].count(IMAGE_TOKEN)
        n_all = sum(u.count(IMAGE_TOKEN) + r.count(IMAGE_TOKEN) for u, r in turns)
        if n_first != 1 or n_all != 1:
            raise DataError("no_image_marker", sid, self.file,
                            f"the first human turn must hold exactly one {IMAGE_TOKEN} marker "
                            f"and no other turn any (found {n_first} there, {n_all} in all)")
        path = _image_path(folder, rec.get("image"), sid, self.file)
        question = turns[0][0].replace(IMAGE_TOKEN, "").strip()
        return {"id": str(sid), "file": self.file, "task": self.task, "turns": turns,
                "question": question, "answer": turns[0][1], "answers": [turns[0][1]],
                "image_path": path}


def _majority(answers: list[str]) -> str:
    return collections.Counter(answers).most_common(1)[0][0] if answers else ""


def _eval_record(sid, file, task, question, answers, suffix, **image) -> dict:
    question = question.replace(IMAGE_TOKEN, "").strip()
    if suffix:
        question = f"{question}\n{suffix}"
    answer = _majority(answers)
    return {"id": str(sid), "file": file, "task": task, "question": question,
            "turns": [[f"{IMAGE_TOKEN}\n{question}", answer]], "answer": answer,
            "answers": list(answers), **image}


class VQAEvalSource(_ListSource):
    """LLaVA-style evaluation jsonl; `answer` is the most frequent of `answers` ('' if none)."""

    def __init__(self, path: str, image_folder: str, on_error: str = "raise",
                 task: str = "vqa", question_suffix: str = ""):
        super().__init__(path, on_error)
        for k, rec in enumerate(read_json_records(path)):
            self._add(self._record, rec, k, image_folder, task, question_suffix)
        self._report()

    def _record(self, rec, k, folder, task, suffix) -> dict:
        sid = rec.get("question_id", rec.get("id", f"#{k}"))
        question = rec.get("text", rec.get("question"))
        if not isinstance(question, str):
            raise DataError("bad_format", sid, self.file, "no `text` / `question` string")
        answers = rec.get("answers", rec.get("answer", rec.get("label", [])))
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list):
            raise DataError("bad_format", sid, self.file, "`answers` must be a string or list")
        answers = [a["answer"] if isinstance(a, dict) else str(a) for a in answers]
        path = _image_path(folder, rec.get("image"), sid, self.file)
        return _eval_record(sid, self.file, rec.get("category", task), question, answers,
                            suffix, image_path=path)


MMBENCH_SUFFIX = "Answer with the option's letter from the given choices directly."


class MMBenchSource(_ListSource):
    """MMBench TSV: hint + question + the present options "A. ..." lines; answer = letter."""

    def __init__(self, path: str, image_folder: str = "", on_error: str = "raise",
                 task: str = "mmbench", question_suffix: str = MMBENCH_SUFFIX):
        super().__init__(path, on_error)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no MMBench file {path!r}")
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        need = {"index", "question", "image", "A", "B"}
        if rows and not need <= set(rows[0]):
            raise ValueError(f"{path}: MMBench TSV needs columns {sorted(need)}, "
                             f"has {sorted(rows[0])}")
        for row in rows:
            self._add(self._record, row, image_folder, task, question_suffix)
        self._report()

    def _record(self, row, folder, task, suffix) -> dict:
        sid = row["index"]
        present = lambda v: v is not None and v.strip() not in ("", "nan")
        options = [f"{c}. {row[c].strip()}" for c in "ABCD" if present(row.get(c))]
        hint = row.get("hint")
        question = (f"{hint.strip()}\n" if present(hint) else "") + row["question"].strip()
        question = "\n".join([question, *options])
        answers = [row["answer"].strip()] if present(row.get("answer")) else []
        image = row["image"].strip()
        if not image:
            raise DataError("missing_image", sid, self.file, "empty `image` column")
        if os.path.isfile(os.path.join(folder, image)) and len(image) < 512:
            src = {"image_path": os.path.join(folder, image)}
        else:
            src = {"image_b64": image}
        return _eval_record(sid, self.file, row.get("category") or task, question, answers,
                            suffix, **src)


@functools.cache
def _tf_example():
    """The tf.Example proto class (imported on first use; not an attribute: grain pickles
    sources into its worker processes, and proto classes do not pickle)."""
    from tensorflow_datasets.proto import tf_example_pb2

    return tf_example_pb2.Example


class SyntheticSource:
    """The built-in suite read back from TFDS (`builder.as_data_source(split)`).

    Reads a record's bytes from the array_record file, parses the tf.Example proto and decodes
    only the fields a record uses (the PNG with PIL): the same values as the TFDS data
    source's generic decode (`data_source[i]`, the fallback), at about a third of its CPU.
    """

    _TEXT = ("id", "question", "answer", "task", "caption", "scene")

    def __init__(self, data_source, name: str):
        self._ds, self.file = data_source, name
        self.skipped: collections.Counter = collections.Counter()
        self._records = getattr(data_source, "data_source", None)  # serialized tf.Examples
        info = getattr(data_source, "dataset_info", None)
        image = info.features["image"] if info is not None else None
        self._image_shape = tuple(image.shape) if image is not None else None

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> dict:
        if self._records is None:
            return self._from_tfds(index)
        feature = _tf_example().FromString(self._records[index]).features.feature
        values = {k: feature[k].bytes_list.value for k in (*self._TEXT, "answers", "image")}
        if len(values["image"]) != 1 or any(len(values[k]) != 1 for k in self._TEXT):
            return self._from_tfds(index)  # not the layout this reader knows
        with Image.open(io.BytesIO(values["image"][0])) as img:
            image = np.asarray(img, np.uint8)
        if image.shape != self._image_shape:
            return self._from_tfds(index)
        q, a = (values[k][0].decode() for k in ("question", "answer"))
        return {"id": values["id"][0].decode(), "file": self.file,
                "task": values["task"][0].decode(), "turns": [[f"{IMAGE_TOKEN}\n{q}", a]],
                "question": q, "answer": a, "answers": [v.decode() for v in values["answers"]],
                "caption": values["caption"][0].decode(), "scene": values["scene"][0].decode(),
                "image": image}

    def _from_tfds(self, index: int) -> dict:
        """The record through TFDS's own decode (features -> numpy)."""
        ex = self._ds[index]
        s = lambda v: v.decode() if isinstance(v, bytes) else str(v)
        q, a = s(ex["question"]), s(ex["answer"])
        return {"id": s(ex["id"]), "file": self.file, "task": s(ex["task"]),
                "turns": [[f"{IMAGE_TOKEN}\n{q}", a]], "question": q, "answer": a,
                "answers": [s(v) for v in ex["answers"]], "caption": s(ex["caption"]),
                "scene": s(ex["scene"]), "image": ex["image"]}

    def __repr__(self) -> str:
        return f"SyntheticSource({self.file!r}, {len(self)} records)"
