import numpy as np
import torch
from torchvision import transforms

from brainseg.inference.preprocess import (
    flip_dataset_offline,
    preprocess,
    random_affine_gamma,
    random_hflip,
    uint8_batch_to_input,
)
from brainseg.io.dataset import read_image, scan_dataset


def article_preprocess(image: np.ndarray) -> torch.Tensor:
    """The article's calls, verbatim."""
    tensor = transforms.Compose([transforms.ToTensor(), transforms.Resize((256, 256))])(image)
    std, mean = torch.std_mean(tensor, dim=(0, 1, 2))
    return transforms.Normalize(mean, 2 * std)(tensor)


def test_preprocess_equals_the_articles_torchvision_calls(lgg_test_dir) -> None:
    record = next(r for r in scan_dataset(lgg_test_dir)[0].slices if r.index == 12)
    image = read_image(record.image_path)
    torch.testing.assert_close(preprocess(image), article_preprocess(image), rtol=0, atol=1e-6)
    odd = np.random.default_rng(0).integers(0, 256, (300, 210, 3), dtype=np.uint8)
    torch.testing.assert_close(preprocess(odd), article_preprocess(odd), rtol=0, atol=1e-5)


def test_batch_path_equals_single_image_path(lgg_test_dir) -> None:
    records = scan_dataset(lgg_test_dir)[1].slices[10:14]
    images = np.stack([read_image(r.image_path) for r in records])
    batch = uint8_batch_to_input(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
    for i, image in enumerate(images):
        torch.testing.assert_close(batch[i], preprocess(image), rtol=0, atol=1e-5)
    raw = uint8_batch_to_input(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=False)
    torch.testing.assert_close(raw[0], preprocess(images[0], normalize=False))
    assert 0 <= raw.min() and raw.max() <= 1


def test_normalized_image_has_zero_mean_and_half_unit_std() -> None:
    image = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = preprocess(image)
    assert abs(out.mean().item()) < 1e-5
    assert abs(out.std().item() - 0.5) < 1e-4


def test_constant_image_gives_zeros_not_nan() -> None:
    for value in (0, 255):
        out = preprocess(np.full((256, 256, 3), value, dtype=np.uint8))
        assert torch.isfinite(out).all() and out.abs().max() == 0


def test_offline_flip_doubles_and_mirrors() -> None:
    images = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    masks = np.zeros((2, 4, 5), bool)
    masks[:, :, 0] = True
    out_images, out_masks = flip_dataset_offline(images, masks)
    assert out_images.shape == (4, 4, 5, 3) and out_masks.shape == (4, 4, 5)
    np.testing.assert_array_equal(out_images[2], images[0][:, ::-1])
    assert out_masks[3][:, -1].all() and not out_masks[3][:, 0].any()


def test_random_flip_moves_image_and_mask_together() -> None:
    images = torch.arange(8 * 3 * 4 * 4, dtype=torch.float32).reshape(8, 3, 4, 4)
    masks = images[:, :1].clone()
    out_images, out_masks = random_hflip(images, masks, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_images[:, :1], out_masks)
    flipped = [not torch.equal(out_images[i], images[i]) for i in range(8)]
    assert any(flipped) and not all(flipped)


def test_affine_gamma_identity_settings_change_nothing() -> None:
    images = torch.rand(4, 3, 64, 64)
    masks = (torch.rand(4, 1, 64, 64) > 0.7).float()
    out_images, out_masks = random_affine_gamma(
        images, masks, torch.Generator().manual_seed(0),
        max_degrees=0.0, scale_range=(1.0, 1.0), max_shift=0.0, gamma_range=(1.0, 1.0),
    )
    assert torch.allclose(out_images, images, atol=1e-5)
    assert torch.equal(out_masks, masks)


def test_affine_gamma_moves_image_and_mask_together() -> None:
    masks = torch.zeros(6, 1, 128, 128)
    masks[:, :, 40:90, 30:70] = 1.0
    images = masks.repeat(1, 3, 1, 1)  # the image is the mask, so both must land in the same place
    out_images, out_masks = random_affine_gamma(images, masks, torch.Generator().manual_seed(1), gamma_range=(1.0, 1.0))
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(out_masks, masks)  # it did move
    bright = out_images[:, 0:1] > 0.5
    inter = (bright & (out_masks > 0)).sum().item()
    union = (bright | (out_masks > 0)).sum().item()
    assert inter / union > 0.95
    assert out_images.min() >= 0.0 and out_images.max() <= 1.0


def test_affine_gamma_changes_contrast_per_channel() -> None:
    images = torch.linspace(0, 1, 64).repeat(2, 3, 64, 1)
    masks = torch.zeros(2, 1, 64, 64)
    out_images, _ = random_affine_gamma(
        images, masks, torch.Generator().manual_seed(2), max_degrees=0.0, scale_range=(1.0, 1.0), max_shift=0.0
    )
    means = out_images.mean(dim=(2, 3))  # (N, C): a gamma other than 1 moves the mean of a 0..1 ramp
    assert len({round(m, 4) for m in means.flatten().tolist()}) == 6
    assert not torch.allclose(out_images, images, atol=1e-3)
