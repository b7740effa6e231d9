"""The pure logic of the disk guests' fixture builders (tests/fixtures/)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.build_disk import (
    BIOS_BOOT_TYPE,
    DEBIAN,
    LINUX_FS_TYPE,
    MIB,
    SMALL,
    DiskImage,
    DiskLayout,
    disk_recipe,
    mmdebstrap_argv,
)
from tests.fixtures.build_guest import GuestBuildError
from tests.fixtures.build_kernel import config_mismatches, kernel_recipe, parse_config
from tests.fixtures.kmodules import (
    ModuleStep,
    SoftDeps,
    parse_show_depends,
    parse_softdeps,
    with_softdeps,
)
from tests.fixtures.recipes import (
    CACHE_ENV,
    DONE,
    build_once,
    find_exact_dependency,
    niced,
    parse_apt_show,
    recipe_hash,
)
from tests.integration.disk_guest import SshTarget, disk_boot_args, disk_copy, free_tcp_port
from tests.integration.harness import GuestTimeout

# -- recipe hashing and the cache -------------------------------------------------


def test_recipe_hash_is_stable_and_short() -> None:
    assert recipe_hash(["a", b"b"]) == recipe_hash([b"a", "b"])
    assert len(recipe_hash(["a"])) == 16
    assert int(recipe_hash(["a"]), 16) >= 0


@pytest.mark.parametrize("left, right", [
    (["ab", "c"], ["a", "bc"]),             # part boundaries count
    (["a", "b"], ["b", "a"]),               # so does the order
    (["a"], ["a", ""]),                     # and an empty part
    (["x" * 100], ["x" * 101]),
])
def test_recipe_hash_tells_recipes_apart(left: list[str], right: list[str]) -> None:
    assert recipe_hash(left) != recipe_hash(right)


def test_kernel_recipe_follows_version_and_fragment() -> None:
    base = kernel_recipe("6.1.192-3", b"CONFIG_E1000E=y\n")
    assert kernel_recipe("6.1.192-3", b"CONFIG_E1000E=y\n") == base
    assert kernel_recipe("6.1.193-1", b"CONFIG_E1000E=y\n") != base
    assert kernel_recipe("6.1.192-3", b"CONFIG_E1000E=y\nCONFIG_EXT4_FS=y\n") != base


def test_build_once_builds_then_finds_it_in_the_cache(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls: list[Path] = []

    def build(work: Path, log: object) -> dict[str, object]:
        calls.append(work)
        (work / "product").write_text("made")
        return {"size": 4}

    directory, info = build_once("thing", "0123456789abcdef", build, log=lambda m: None)
    assert directory == tmp_path / "thing" / "0123456789abcdef"
    assert (directory / "product").read_text() == "made"
    assert info["size"] == 4 and info["recipe"] == "0123456789abcdef"
    assert json.loads((directory / DONE).read_text())["size"] == 4
    again, _ = build_once("thing", "0123456789abcdef", build, log=lambda m: None)
    assert again == directory and len(calls) == 1

    # A new recipe builds anew and drops the old product.
    newer, _ = build_once("thing", "fedcba9876543210", build, log=lambda m: None)
    assert len(calls) == 2 and newer.is_dir() and not directory.exists()


def test_build_once_keeps_nothing_of_a_failed_build(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))

    def build(work: Path, log: object) -> dict[str, object]:
        (work / "half").write_text("half")
        raise GuestBuildError("the mirror is down")

    with pytest.raises(GuestBuildError, match="mirror is down"):
        build_once("thing", "0123456789abcdef", build, log=lambda m: None)
    assert [p.name for p in (tmp_path / "thing").iterdir()] == [".lock"]


def test_build_once_clears_what_a_killed_build_left(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    left = tmp_path / "thing" / ".0123456789abcdef-x1y2z3"
    left.mkdir(parents=True)
    (left / "half-built").write_text("")
    build_once("thing", "0123456789abcdef", lambda work, log: {}, log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "thing").iterdir()) == [".lock", "0123456789abcdef"]


def test_niced_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEMU_FIXTURE_NICE", raising=False)
    assert niced(["make"]) == ["make"]
    monkeypatch.setenv("PEMU_FIXTURE_NICE", "15")
    assert niced(["make", "-j2"]) == ["nice", "-n", "15", "make", "-j2"]
    monkeypatch.setenv("PEMU_FIXTURE_NICE", "0")
    assert niced(["make"]) == ["make"]


APT_SHOW = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel
 and modules for use on PCs.

Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Depends: libc6 (>= 2.34)

Package: busybox-static
Version: 1:1.30.1-6
"""


def test_parse_apt_show() -> None:
    packages = parse_apt_show(APT_SHOW)
    assert set(packages) == {"linux-image-amd64", "busybox-static"}
    assert packages["linux-image-amd64"]["Depends"] == "linux-image-6.1.0-57-amd64 (= 6.1.192-3)"
    assert packages["linux-image-amd64"]["Description"].splitlines()[1].strip() == \
        "This package depends on the latest Linux kernel"
    assert packages["busybox-static"]["Version"] == "1:1.35.0-4+deb12u1+b1"     # the first stanza


@pytest.mark.parametrize("depends, expected", [
    ("linux-image-6.1.0-57-amd64 (= 6.1.192-3)", ("linux-image-6.1.0-57-amd64", "6.1.192-3")),
    ("kmod, linux-image-6.1.0-9-amd64 (=6.1.27-1) | foo", ("linux-image-6.1.0-9-amd64", "6.1.27-1")),
    ("foo | linux-image-6.1.0-9-amd64 ( = 6.1.27-1 )", ("linux-image-6.1.0-9-amd64", "6.1.27-1")),
    ("linux-image-6.1.0-57-amd64 (>= 6.1.192-3)", None),
    ("linux-headers-6.1.0-57-amd64 (= 6.1.192-3)", None),
    ("", None),
])
def test_find_exact_dependency(depends: str, expected: tuple[str, str] | None) -> None:
    assert find_exact_dependency(depends, "linux-image-") == expected


# -- the partition table ----------------------------------------------------------------


def test_layout_puts_the_root_at_2_mib_after_a_1_mib_partition() -> None:
    layout = DiskLayout.for_root(256 * MIB)
    assert (layout.part1_offset, layout.part1_size) == (MIB, MIB)
    assert (layout.root_offset, layout.root_size) == (2 * MIB, 256 * MIB)
    # Room for the backup GPT (33 sectors) after the root.
    assert layout.disk_size - (layout.root_offset + layout.root_size) >= 33 * 512
    assert layout.disk_size == 259 * MIB


@pytest.mark.parametrize("size", [0, -MIB, MIB + 512, 4096])
def test_layout_refuses_sizes_that_are_not_whole_mib(size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 1 MiB"):
        DiskLayout.for_root(size)


def test_sfdisk_script_in_sectors() -> None:
    script = DiskLayout.for_root(64 * MIB).sfdisk_script()
    assert script.splitlines() == [
        "label: gpt",
        "unit: sectors",
        "first-lba: 2048",
        f"start=2048, size=2048, type={BIOS_BOOT_TYPE}, name=\"bios\"",
        f"start=4096, size=131072, type={LINUX_FS_TYPE}, name=\"root\"",
    ]


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk is not installed (fdisk)")
def test_sfdisk_writes_the_layout(tmp_path: Path) -> None:
    layout = DiskLayout.for_root(8 * MIB)
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    with open(image, "r+b") as disk:
        disk.truncate(layout.disk_size)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(image)],
                   input=layout.sfdisk_script(), text=True, check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]] == [
        (layout.part1_offset, layout.part1_size), (layout.root_offset, layout.root_size)]
    data = image.read_bytes()
    assert data[512:520] == b"EFI PART"                      # primary GPT header, LBA 1
    assert data[-512:-504] == b"EFI PART"                    # backup header, last LBA


# -- module closures: softdeps and modprobe --show-depends --------------------------


SOFTDEP_TEXT = """\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep cifs gcm
softdep cifs ccm
softdep snd-hda-codec pre: snd_a snd-b post: snd_c   # a comment
softdep btrfs pre: xxhash64 post: crc32c-generic pre: blake2b-256
options ext4 foo=1
softdep
"""


def test_parse_softdeps() -> None:
    deps = parse_softdeps(SOFTDEP_TEXT)
    assert deps["ext4"] == SoftDeps(pre=("crypto-crc32c",))
    assert deps["jbd2"] == SoftDeps(pre=("crypto-crc32c",))
    assert deps["cifs"] == SoftDeps(pre=("gcm", "ccm"))        # no pre: still means pre
    assert deps["snd_hda_codec"] == SoftDeps(pre=("snd_a", "snd-b"), post=("snd_c",))
    assert deps["btrfs"] == SoftDeps(pre=("xxhash64", "blake2b-256"), post=("crc32c-generic",))
    assert set(deps) == {"ext4", "jbd2", "cifs", "snd_hda_codec", "btrfs"}


def test_with_softdeps_puts_pre_before_and_post_after() -> None:
    deps = parse_softdeps(SOFTDEP_TEXT)
    assert with_softdeps(["ahci", "sd_mod", "ext4"], deps) == [
        "ahci", "sd_mod", "crypto-crc32c", "ext4"]
    assert with_softdeps(["jbd2", "ext4"], deps) == ["crypto-crc32c", "jbd2", "ext4"]
    assert with_softdeps(["snd-hda-codec"], deps) == ["snd_a", "snd-b", "snd-hda-codec", "snd_c"]
    assert with_softdeps([], deps) == []


SHOW_DEPENDS = """\
insmod /t/lib/modules/6.1.0-57-amd64/kernel/drivers/scsi/scsi_common.ko
insmod /t/lib/modules/6.1.0-57-amd64/kernel/drivers/scsi/scsi_mod.ko
insmod /t/lib/modules/6.1.0-57-amd64/kernel/arch/x86/crypto/crc32c-intel.ko
builtin crc32c
insmod /t/lib/modules/6.1.0-57-amd64/kernel/drivers/scsi/scsi_common.ko
insmod /t/lib/modules/6.1.0-57-amd64/kernel/fs/ext4/ext4.ko.xz debug=1
"""


def test_parse_show_depends() -> None:
    steps = parse_show_depends(SHOW_DEPENDS, "/t/lib/modules/6.1.0-57-amd64/")
    assert steps == [
        ModuleStep(False, "scsi_common", "kernel/drivers/scsi/scsi_common.ko"),
        ModuleStep(False, "scsi_mod", "kernel/drivers/scsi/scsi_mod.ko"),
        ModuleStep(False, "crc32c_intel", "kernel/arch/x86/crypto/crc32c-intel.ko"),
        ModuleStep(True, "crc32c", ""),
        ModuleStep(False, "ext4", "kernel/fs/ext4/ext4.ko.xz"),
    ]


def test_parse_show_depends_refuses_a_module_outside_the_tree() -> None:
    with pytest.raises(GuestBuildError, match="outside"):
        parse_show_depends("insmod /lib/modules/other/kernel/x.ko\n", "/t/lib/modules/6.1")


# -- the kernel config ---------------------------------------------------------------


def test_parse_config() -> None:
    text = """\
#
# Automatically generated file
CONFIG_SATA_AHCI=y
CONFIG_E1000E=m
CONFIG_LOCALVERSION=""
CONFIG_NR_CPUS=64
# CONFIG_MODULES is not set
# CONFIG_DRM is a thing (not an option line)
"""
    assert parse_config(text) == {"CONFIG_SATA_AHCI": "y", "CONFIG_E1000E": "m",
                                  "CONFIG_LOCALVERSION": '""', "CONFIG_NR_CPUS": "64",
                                  "CONFIG_MODULES": "n"}


def test_config_mismatches() -> None:
    wanted = {"CONFIG_E1000E": "y", "CONFIG_MODULES": "n", "CONFIG_DRM": "n", "CONFIG_EXT4_FS": "y"}
    got = {"CONFIG_E1000E": "m", "CONFIG_MODULES": "n", "CONFIG_EXT4_FS": "y"}
    assert config_mismatches(wanted, got) == ["CONFIG_E1000E=y (got m)"]
    assert config_mismatches(wanted, {}) == ["CONFIG_E1000E=y (got n)", "CONFIG_EXT4_FS=y (got n)"]


def test_fragment_asks_for_the_q35_drivers_built_in() -> None:
    fragment = parse_config((Path(__file__).parents[1] / "fixtures" / "kernel" / "pemu.config").read_text())
    for option in ("CONFIG_SATA_AHCI", "CONFIG_BLK_DEV_SD", "CONFIG_EXT4_FS", "CONFIG_E1000E",
                   "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_BLK", "CONFIG_SERIAL_8250_CONSOLE"):
        assert fragment[option] == "y", option
    assert fragment["CONFIG_MODULES"] == "n"


# -- mmdebstrap's command line -----------------------------------------------------


def test_mmdebstrap_argv() -> None:
    sources = [Path("/etc/apt/sources.list.d/debian.sources")]
    small = mmdebstrap_argv(SMALL, "bookworm", Path("/c/rootfs"), sources)
    assert small[:4] == ["mmdebstrap", "--mode=root", "--variant=extract",
                         "--include=busybox-static,dropbear-bin"]
    assert small[-3:] == ["bookworm", "/c/rootfs", "/etc/apt/sources.list.d/debian.sources"]
    assert not any(arg.startswith("--dpkgopt") for arg in small)   # dpkg does not run there
    debian = mmdebstrap_argv(DEBIAN, "bookworm", Path("/c/rootfs"), sources)
    assert "--variant=minbase" in debian
    assert "--include=systemd-sysv,udev,kmod,openssh-server,iproute2" in debian
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in debian


# -- the ssh harness helpers ---------------------------------------------------------


def _disk(image: Path) -> DiskImage:
    return DiskImage(flavour="small", image=image, key=image.with_name("id_ed25519"),
                     root_offset=2 * MIB, root_size=MIB, release="6.1.0-57-amd64", uuid="u")


def test_disk_boot_args_is_the_seeds_command_line() -> None:
    disk = _disk(Path("/c/disk.img"))
    args = disk_boot_args(disk, kernel=Path("/c/bzImage"), port=5555)
    assert args == ["-machine", "q35", "-m", "1024", "-nographic", "-kernel", "/c/bzImage",
                    "-append", "root=/dev/sda2 console=ttyS0",
                    "-device", "e1000e,netdev=net0",
                    "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:5555-:22",
                    "-hda", "/c/disk.img"]
    args = disk_boot_args(disk, kernel=Path("/k"), initrd=Path("/i"), port=1, hda=False,
                          append="root=/dev/sda2", extra=["-smp", "2"])
    assert args[7:11] == ["-initrd", "/i", "-append", "root=/dev/sda2"]
    assert args[-4:] == ["-drive", "file=/c/disk.img,format=raw,if=ide", "-smp", "2"]


def test_ssh_argv_has_the_batch_options() -> None:
    argv = SshTarget(2222, Path("/c/id_ed25519")).argv("uname -a")
    assert argv[1:5] == ["-p", "2222", "-i", "/c/id_ed25519"]
    for option in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "BatchMode=yes"):
        assert argv[argv.index(option) - 1] == "-o"
    assert argv[-2:] == ["root@127.0.0.1", "uname -a"]


@pytest.mark.skipif(shutil.which("ssh") is None, reason="ssh is not installed (openssh-client)")
def test_wait_until_up_gives_up_on_a_port_nobody_answers(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    target = SshTarget(free_tcp_port(), key)
    assert not target.answers(timeout=10)
    with pytest.raises(GuestTimeout, match=f"ssh on port {target.port} did not answer within 1 s"):
        target.wait_until_up(timeout=1, interval=0.2)


def test_disk_copy_is_a_sparse_private_copy(tmp_path: Path) -> None:
    source = tmp_path / "cache" / "disk.img"
    source.parent.mkdir()
    with open(source, "wb") as image:
        image.truncate(64 * MIB)
        image.seek(3 * MIB)
        image.write(b"root")
    (tmp_path / "run").mkdir()
    copy = disk_copy(_disk(source), tmp_path / "run")
    assert copy.image.parent == tmp_path / "run" and copy.image.read_bytes() == source.read_bytes()
    assert copy.image.stat().st_blocks * 512 < 8 * MIB
    assert copy.key == source.with_name("id_ed25519") and copy.root_offset == 2 * MIB


def test_disk_recipe_follows_what_shapes_the_image(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n")
    base = disk_recipe(SMALL, "parts1", "bookworm", [sources])
    assert disk_recipe(SMALL, "parts1", "bookworm", [sources]) == base
    assert disk_recipe(DEBIAN, "parts1", "bookworm", [sources]) != base
    assert disk_recipe(SMALL, "parts2", "bookworm", [sources]) != base     # another stock kernel
    assert disk_recipe(SMALL, "parts1", "trixie", [sources]) != base
    changed = dataclasses.replace(SMALL, files={**SMALL.files, "etc/motd": ("hi\n", 0o644)})
    assert disk_recipe(changed, "parts1", "bookworm", [sources]) != base
    sources.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert disk_recipe(SMALL, "parts1", "bookworm", [sources]) != base
