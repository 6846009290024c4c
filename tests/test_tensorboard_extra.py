"""TensorBoard is an optional extra: without it a run says once why `logs/` stays empty."""
import sys


def test_missing_tensorboard_says_which_extra_and_keeps_training(tmp_path, monkeypatch, capsys):
    from trainer.spo import train

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    writer = train._tensorboard(tmp_path / "logs")
    writer.add_scalar("loss", 1.0, 0)  # a no-op writer: the training loop runs on
    out = capsys.readouterr().out.strip()
    assert out.count("\n") == 0 and str(tmp_path / "logs") in out
    assert "tensorboard extra" in out and "pip install tensorboard" in out and "log.jsonl" in out
    assert not (tmp_path / "logs").exists()
