"""The post-hoc maps as modules (TemperatureScaler & co.): fitting from a DataLoader equals the fit functions on the
logits computed by hand, a known over-confidence is recovered, forward is the written-down formula, the state travels
in state_dict, and compiled / exported / ONNX programs equal eager."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from focal_calibration import (DirichletScaler, MatrixScaler, TemperatureScaler, VectorScaler, collect_logits,
                               fit_dirichlet, fit_matrix_scaling, fit_temperature, fit_vector_scaling)

K = 4


class OverConfident(nn.Module):
    """Logits = 3 x the true log-odds of the labels (a model whose temperature is 3), plus a dropout that would
    change the logits if the fit ran in train mode."""

    def __init__(self, scale=3.0):
        super().__init__()
        self.linear = nn.Linear(K, K, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(scale * torch.eye(K))
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.linear(x))


class DictModel(OverConfident):
    """Hugging Face style: keyword inputs, a mapping output with "logits"."""

    def forward(self, features, attention=None):
        return {"logits": super().forward(features), "hidden": features}


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3000, K, generator=generator) * 1.5
    labels = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return scores, labels


def _loader(*tensors, batch_size=256):
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


def test_temperature_fit_from_a_loader_equals_fit_temperature_and_recovers_t(data):
    scores, labels = data
    model = OverConfident().train()  # in train mode: the fit must switch dropout off
    scaler = TemperatureScaler(model).fit(_loader(scores, labels))
    with torch.no_grad():
        reference = fit_temperature(model.eval()(scores), labels)
    assert scaler.fitted and float(scaler.temperature) == reference.temperature
    assert abs(reference.temperature - 3.0) <= 0.3  # the known over-confidence
    nll = TemperatureScaler(model).fit(_loader(scores, labels), "nll", method="lbfgs")
    assert abs(float(nll.temperature) - 3.0) <= 0.2
    assert np.array_equal(scaler.fit_result.ece, reference.ece)


def test_fit_restores_every_modules_mode_and_keeps_no_graph(data):
    scores, labels = data
    model = OverConfident().train()
    model.linear.eval()  # mixed modes must come back as they were
    logits, targets = collect_logits(model, _loader(scores, labels))
    assert model.training and model.dropout.training and not model.linear.training
    assert logits.grad_fn is None and not logits.requires_grad and logits.device.type == "cpu"
    assert torch.equal(logits, 3 * scores) and torch.equal(targets, labels)  # eval mode: dropout was off

    class Failing(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    failing = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        collect_logits(failing, _loader(scores, labels))
    assert failing.training


def test_batches_as_dicts_input_key_and_batch_fn_give_the_same_fit(data):
    scores, labels = data
    expected = float(TemperatureScaler(OverConfident()).fit(_loader(scores, labels)).temperature)

    dicts = [{"features": scores[i:i + 500], "attention": None, "labels": labels[i:i + 500]}
             for i in range(0, 3000, 500)]
    assert float(TemperatureScaler(DictModel()).fit(dicts).temperature) == expected  # model(**inputs)
    keyed = [{"x": d["features"], "y": d["labels"]} for d in dicts]
    assert float(TemperatureScaler(OverConfident()).fit(keyed, input_key="x", target_key="y").temperature) == expected
    model = OverConfident()
    by_fn = TemperatureScaler(model).fit(_loader(scores, labels), batch_fn=lambda b: (model(b[0]), b[1]))
    assert float(by_fn.temperature) == expected


def test_forward_is_model_over_t_and_state_dict_round_trips(data):
    scores, labels = data
    scaler = TemperatureScaler(OverConfident()).fit(_loader(scores, labels)).eval()
    x = torch.randn(7, K)
    with torch.no_grad():
        assert torch.equal(scaler(x), scaler.model(x) / float(scaler.temperature))
        mapped = TemperatureScaler(DictModel()).fit_logits(3 * scores, labels).eval()(x)
        assert torch.equal(mapped["logits"], 3 * x / float(scaler.temperature)) and "hidden" in mapped

    fresh = TemperatureScaler(OverConfident(scale=1.0))
    assert not fresh.fitted
    with pytest.raises(RuntimeError, match="not fitted.*fit"):
        fresh(x)
    fresh.load_state_dict(scaler.state_dict())
    assert fresh.fitted and float(fresh.temperature) == float(scaler.temperature)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), scaler(x))
    unfitted_state = TemperatureScaler(OverConfident()).state_dict()
    fresh.load_state_dict(unfitted_state)
    assert not fresh.fitted


def test_bad_batches_and_outputs_are_named(data):
    scores, labels = data
    with pytest.raises(ValueError, match="sequence of 3 items"):
        TemperatureScaler(OverConfident()).fit(_loader(scores, labels, labels))
    with pytest.raises(KeyError, match="target_key='labels'"):
        TemperatureScaler(OverConfident()).fit([{"x": scores, "y": labels}], input_key="x")
    with pytest.raises(TypeError, match="returned tuple"):
        collect_logits(_TupleModel(), [(scores, labels)])
    with pytest.raises(ValueError, match="no batches"):
        TemperatureScaler(OverConfident()).fit([])
    with pytest.raises(ValueError, match="class_dim=2"):
        collect_logits(OverConfident(), [(scores, labels)], class_dim=2)
    with pytest.raises(TypeError, match="nn.Module"):
        TemperatureScaler(lambda x: x)


class _TupleModel(nn.Module):
    def forward(self, x):
        return x, x


def _by_hand(method, z, weight, bias):
    """The maps' formulas in float64: a ⊙ z + b, W z + b, W log softmax(z) + b."""
    z, weight, bias = z.double(), torch.as_tensor(weight).double(), torch.as_tensor(bias).double()
    if method == "vector":
        return weight * z + bias
    x = torch.log_softmax(z, -1) if method == "dirichlet" else z
    return x @ weight.T + bias


@pytest.mark.parametrize("cls, fit, method, options", [
    (VectorScaler, fit_vector_scaling, "vector", {}),
    (MatrixScaler, fit_matrix_scaling, "matrix", {"odir": (0.01, 0.01)}),
    (DirichletScaler, fit_dirichlet, "dirichlet", {"odir": (0.01, 0.01)}),
])
def test_linear_maps_as_modules(data, cls, fit, method, options):
    scores, labels = data
    scores, labels = scores[:600], labels[:600]
    model = OverConfident()
    scaler = cls(model).fit(_loader(scores, labels), **options).eval()
    reference = fit(3 * scores, labels, **options)
    assert np.allclose(scaler.weight.numpy(), reference.weight, rtol=0, atol=1e-12)
    assert np.allclose(scaler.bias.numpy(), reference.bias, rtol=0, atol=1e-12)
    assert scaler.num_classes == K
    x = torch.randn(9, K)
    with torch.no_grad():
        out = scaler(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), _by_hand(method, 3 * x, reference.weight, reference.bias), atol=1e-5)

    fresh = cls(OverConfident())  # K unknown before loading: the buffers take the stored shapes
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh(x)
    fresh.load_state_dict(scaler.state_dict())
    with torch.no_grad():
        assert fresh.fitted and torch.equal(fresh.eval()(x), out)
    with pytest.raises(ValueError, match="fitted on K = 4"):
        scaler.scale(torch.randn(2, K + 1))


def test_segmentation_logits_with_class_dim_1(data):
    """[N, C, H, W] logits: the fit sees every pixel (ignore_index dropped) and the map acts on dim 1."""
    scores, labels = data
    pixels = scores[:2400].reshape(6, 20, 20, K).permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]
    targets = labels[:2400].reshape(6, 20, 20).clone()
    targets[:, :2] = 255
    conv = nn.Conv2d(K, K, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(3 * torch.eye(K)[:, :, None, None])
    keep = targets != 255
    flat = (3 * pixels).permute(0, 2, 3, 1)[keep]
    scaler = TemperatureScaler(conv, class_dim=1).fit(_loader(pixels, targets, batch_size=2), ignore_index=255)
    assert float(scaler.temperature) == fit_temperature(flat, targets[keep]).temperature
    vector = VectorScaler(conv, class_dim=1).fit(_loader(pixels, targets, batch_size=2), ignore_index=255)
    with torch.no_grad():
        out = vector(pixels[:1])
    expected = _by_hand("vector", (3 * pixels[:1]).permute(0, 2, 3, 1), vector.weight, vector.bias)
    assert torch.allclose(out.permute(0, 2, 3, 1).double(), expected, atol=1e-5)


@pytest.fixture(scope="module")
def fitted_scalers(data):
    scores, labels = data
    model = nn.Sequential(nn.Linear(K, 8), nn.Tanh(), nn.Linear(8, K))
    loader = _loader(scores[:800], labels[:800])
    return [TemperatureScaler(model).fit(loader).eval(),
            DirichletScaler(model).fit(loader, odir=(0.01, 0.01)).eval()]


def test_compiled_and_exported_programs_equal_eager(fitted_scalers):
    x = torch.randn(5, K)
    for scaler in fitted_scalers:
        with torch.no_grad():
            eager = scaler(x)
            compiled = torch.compile(scaler, backend="aot_eager", fullgraph=True)(x)
        assert torch.allclose(compiled, eager, rtol=1e-6, atol=1e-6)
        program = torch.export.export(scaler, (x,))
        with torch.no_grad():
            assert torch.allclose(program.module()(x), eager, rtol=1e-6, atol=1e-6)


def test_onnx_export_runs_in_the_reference_evaluator(fitted_scalers, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    x = torch.randn(5, K)
    for index, scaler in enumerate(fitted_scalers):
        path = tmp_path / f"scaler{index}.onnx"
        torch.onnx.export(scaler, (x,), dynamo=True).save(str(path))
        proto = onnx.load(str(path))
        out = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert np.allclose(out, scaler(x).numpy(), rtol=1e-5, atol=1e-5)
