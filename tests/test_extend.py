"""Adding a representer is one module plus one YAML file: registered from outside the package, it trains."""

from __future__ import annotations

import math
import sys
import textwrap

from test_train import compose_train

import train as train_script

MODULE = '''
import torch
from soft_tokens.representers import SoftRepresenter


class TopKSoftRepresenter(SoftRepresenter):
    """Soft tokens over the k most likely tokens only (renormalised), with the same Gaussian noise."""

    def __init__(self, k: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.k = k

    def mixture(self, logits, embedding):
        top = logits.float().topk(self.k, dim=-1)
        probs = torch.softmax(top.values / self.temperature, dim=-1)
        return (probs.unsqueeze(-1) * embedding[top.indices].float()).sum(-2).to(embedding.dtype)
'''

YAML = """
_target_: my_topk.TopKSoftRepresenter
name: topk
k: 4
temperature: 0.5
gamma: 0.33
"""


def test_new_representer_from_outside_trains(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "my_topk.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "conf" / "representer").mkdir(parents=True)
    (tmp_path / "conf" / "representer" / "topk.yaml").write_text(YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_train(
        [
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            "representer=topk",
            "debug=fast",
            "trainer.max_steps=1",
            f"model.name_or_path={tiny_model_dir}",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
        ],
        tmp_path / "run",
    )
    metrics = train_script.train(cfg)
    assert "my_topk" in sys.modules  # the representer was imported from the test's folder, not the package
    assert "val/accuracy_topk" in metrics and math.isfinite(metrics["train/loss"])
    assert (tmp_path / "run" / "policy" / "model.safetensors").exists()
