"""A config saved as JSON (sweep points, reruns): `--config=configs/from_json.py:PATH`."""

import json

import ml_collections


def get_config(path: str) -> ml_collections.ConfigDict:
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
