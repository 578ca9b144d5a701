"""Image trainer overhead: classification/train.py's training step vs bare training loops, same model, same data.

Numbers (2-core CPU, small_cnn, Fashion-MNIST, batch 128) are printed as ratios against baselines run in the same
process, interleaved, median of the repetitions:
  A. bare loop over the same device batches (same batched crop + flip + normalisation), F.cross_entropy, SGD step --
     isolates the trainer's own bookkeeping (core loss, per-epoch statistics, feature return, progress, clipping off);
  B. a plain torchvision-references loop: DataLoader over the images with per-sample RandomCrop(pad 4) +
     RandomHorizontalFlip transforms, F.cross_entropy, SGD step.
Target: trainer time / A <= 1.05.
With --cuda (on a GPU machine): images/s of a CIFAR ResNet-50 step in fp32 vs bf16 autocast + channels_last.

    python benchmarks/classification_overhead.py [--steps 30] [--repeats 5] [--model small_cnn] [--cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from classification.batches import Normalize, epoch_generator, iterate_batches, random_crop_flip  # noqa: E402
from classification.datasets import DatasetNotFoundError, ImageSplit, load_dataset  # noqa: E402
from classification.models import build_model  # noqa: E402
from classification.train import train_one_epoch  # noqa: E402
from focal_calibration.losses import build_loss  # noqa: E402


def _data(n):
    try:
        data = load_dataset("fashion-mnist")
        return data.train.subset(torch.arange(n)), data.mean, data.std, "Fashion-MNIST"
    except DatasetNotFoundError:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (n,), generator=generator)
        return ImageSplit(labels, images=images), (0.5,), (0.25,), "random 28x28 images (Fashion-MNIST not installed)"


def bare_same_batches(model, optimizer, split, rows, normalize, generator, batch_size, device):
    model.train()
    for images, labels in iterate_batches(split, rows, batch_size, device):
        logits = model(normalize(random_crop_flip(images, 4, generator)))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bare_torchvision(model, optimizer, loader, device):
    model.train()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--cuda", action="store_true", help="also the AMP + channels_last benchmark on CUDA")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    n = args.steps * args.batch_size
    split, mean, std, source = _data(n)
    rows = torch.arange(n)
    normalize = Normalize(mean, std, device)
    model = build_model(args.model, 10, 1).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = build_loss("ce")
    trainer_args = SimpleNamespace(batch_size=args.batch_size, workers=0, augment=True, crop_padding=4, amp="none",
                                   clip_grad_norm=None)

    from torchvision.transforms import v2
    transform = v2.Compose([v2.RandomCrop(28, padding=4), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return transform(split.images[i]), split.labels[i]

    loader = torch.utils.data.DataLoader(Images(), batch_size=args.batch_size, shuffle=True, num_workers=0)

    def run_trainer():
        loss_sum, stats = train_one_epoch(model, model, criterion, optimizer, None, split, rows, normalize,
                                          epoch_generator(0, 0), trainer_args, device)
        stats.compute()  # the trainer's one host transfer per epoch
        float(loss_sum)

    contenders = {
        "trainer (train_one_epoch)": run_trainer,
        "A: bare loop, same batches": lambda: bare_same_batches(model, optimizer, split, rows, normalize,
                                                                 epoch_generator(0, 0), args.batch_size, device),
        "B: bare torchvision loop": lambda: bare_torchvision(model, optimizer, loader, device),
    }
    for fn in contenders.values():  # warm-up
        fn()
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(f"data: {source}; model {args.model}; batch {args.batch_size}; {args.steps} steps x {args.repeats} "
          f"repeats; {torch.get_num_threads()} threads")
    trainer = statistics.median(times["trainer (train_one_epoch)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:30s} {args.steps / median:8.2f} steps/s  {n / median:9.1f} images/s  "
              f"trainer time / this = {trainer / median:.3f}")
    if args.cuda:
        cuda_benchmark(args)


def cuda_benchmark(args):
    if not torch.cuda.is_available():
        print("--cuda: no CUDA device here, skipped")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    for name, amp, channels_last in (("fp32", None, False), ("bf16 + channels_last", torch.bfloat16, True),
                                     ("fp16 + channels_last", torch.float16, True)):
        model = build_model("resnet50", 10, 3).to(device)
        inputs = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        criterion = build_loss("flsd-53")

        def step():
            with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(inputs)
            loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        for _ in range(10):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        print(f"  CUDA resnet50 {name:22s} {args.steps * args.batch_size / elapsed:9.1f} images/s")


if __name__ == "__main__":
    main()
