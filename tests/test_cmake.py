"""A real CMake + gcc project that compiles a model in with edgekit_add_model.

The C program hashes the embedded array itself (sha256 below, public domain) and compares size
and digest with the values the test reads from the bundle's manifest.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.cli import main

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("gcc") is None, reason="needs cmake and gcc"
)

TARGET = "x86-tflite-fp32"

MODEL_PY = """\
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).eval()
"""

RECIPE = f"""\
model = "tinymodel:build"
input_shapes = ["1x1x8x8"]
input_names = ["image"]
output_names = ["logits"]
targets = ["{TARGET}"]
name = "tiny"
"""

CMAKELISTS = """\
cmake_minimum_required(VERSION 3.20)
project(edgekit_fw C)
execute_process(COMMAND "${EDGEKIT_EXECUTABLE}" -m edgekit cmake-dir
                OUTPUT_VARIABLE EDGEKIT_CMAKE_DIR OUTPUT_STRIP_TRAILING_WHITESPACE
                COMMAND_ERROR_IS_FATAL ANY)
list(APPEND CMAKE_MODULE_PATH "${EDGEKIT_CMAKE_DIR}")
include(Edgekit)
add_executable(check_model main.c sha256.c)
edgekit_add_model(TARGET check_model NAME tiny_model RECIPE model/recipe.toml
                  BACKEND_TARGET x86-tflite-fp32 MAX_BYTES 1000000)
"""

SHA256_C = r"""
/* Minimal SHA-256 (public domain, after Brad Conte's crypto-algorithms). */
#include <stdint.h>
#include <string.h>
#include "sha256.h"
#define ROTR(a,b) (((a) >> (b)) | ((a) << (32-(b))))
#define CH(x,y,z) (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x,y,z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define EP0(x) (ROTR(x,2) ^ ROTR(x,13) ^ ROTR(x,22))
#define EP1(x) (ROTR(x,6) ^ ROTR(x,11) ^ ROTR(x,25))
#define SIG0(x) (ROTR(x,7) ^ ROTR(x,18) ^ ((x) >> 3))
#define SIG1(x) (ROTR(x,17) ^ ROTR(x,19) ^ ((x) >> 10))
static const uint32_t k[64] = {
 0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
 0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
 0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
 0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
 0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
 0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
 0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
 0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
static void transform(uint32_t s[8], const uint8_t d[64]) {
  uint32_t a,b,c,e,f,g,h,dd,t1,t2,m[64]; int i;
  for (i = 0; i < 16; ++i)
    m[i] = ((uint32_t)d[i*4] << 24) | ((uint32_t)d[i*4+1] << 16) | ((uint32_t)d[i*4+2] << 8) | d[i*4+3];
  for (; i < 64; ++i) m[i] = SIG1(m[i-2]) + m[i-7] + SIG0(m[i-15]) + m[i-16];
  a=s[0]; b=s[1]; c=s[2]; dd=s[3]; e=s[4]; f=s[5]; g=s[6]; h=s[7];
  for (i = 0; i < 64; ++i) {
    t1 = h + EP1(e) + CH(e,f,g) + k[i] + m[i]; t2 = EP0(a) + MAJ(a,b,c);
    h=g; g=f; f=e; e=dd+t1; dd=c; c=b; b=a; a=t1+t2;
  }
  s[0]+=a; s[1]+=b; s[2]+=c; s[3]+=dd; s[4]+=e; s[5]+=f; s[6]+=g; s[7]+=h;
}
void sha256_hex(const unsigned char *data, size_t len, char out[65]) {
  uint32_t s[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,
                   0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
  uint8_t block[64]; size_t i = 0, n; uint64_t bits = (uint64_t)len * 8; int j;
  for (; i + 64 <= len; i += 64) transform(s, data + i);
  n = len - i; memcpy(block, data + i, n); block[n++] = 0x80;
  if (n > 56) { memset(block + n, 0, 64 - n); transform(s, block); n = 0; }
  memset(block + n, 0, 56 - n);
  for (j = 0; j < 8; ++j) block[63 - j] = (uint8_t)(bits >> (8 * j));
  transform(s, block);
  for (j = 0; j < 32; ++j) {
    static const char hexd[] = "0123456789abcdef";
    uint8_t byte = (uint8_t)(s[j / 4] >> (24 - 8 * (j % 4)));
    out[2*j] = hexd[byte >> 4]; out[2*j+1] = hexd[byte & 15];
  }
  out[64] = 0;
}
"""

MAIN_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sha256.h"
#include "tiny_model.h"

int main(int argc, char **argv) {
  char digest[65];
  static const int in_shape[] = TINY_MODEL_INPUT_0_SHAPE;
  if (argc != 3) { fprintf(stderr, "usage: check_model SIZE SHA256\n"); return 2; }
  sha256_hex(tiny_model, tiny_model_size, digest);
  printf("size %zu sha256 %s align %d input %s %dx%dx%dx%d\n", tiny_model_size, digest,
         (int)((uintptr_t)tiny_model % 16), TINY_MODEL_INPUT_0_NAME,
         in_shape[0], in_shape[1], in_shape[2], in_shape[3]);
  if (tiny_model_size != strtoul(argv[1], NULL, 10) || tiny_model_size != TINY_MODEL_SIZE) {
    fprintf(stderr, "size mismatch\n"); return 1;
  }
  if (strcmp(digest, argv[2]) != 0 || strcmp(digest, tiny_model_sha256) != 0) {
    fprintf(stderr, "sha256 mismatch\n"); return 1;
  }
  if ((uintptr_t)tiny_model % 16 != 0) { fprintf(stderr, "misaligned\n"); return 1; }
  puts("OK");
  return 0;
}
"""


def _project(root: Path) -> None:
    (root / "model").mkdir(parents=True)
    (root / "model" / "tinymodel.py").write_text(MODEL_PY)
    (root / "model" / "recipe.toml").write_text(RECIPE)
    (root / "CMakeLists.txt").write_text(CMAKELISTS)
    (root / "sha256.c").write_text(SHA256_C)
    (root / "sha256.h").write_text(
        "#include <stddef.h>\nvoid sha256_hex(const unsigned char *data, size_t len, "
        "char out[65]);\n")
    (root / "main.c").write_text(MAIN_C)


def _run(cmd, env, cwd):
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_cmake_dir_command(capsys):
    assert main(["cmake-dir"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "Edgekit.cmake").is_file() and (folder / "edgekit-config.cmake").is_file()
    assert main(["cmake-dir", "--python"]) == 0
    assert capsys.readouterr().out.strip() == sys.executable


@pytest.mark.slow
def test_cmake_project_builds_embeds_and_rebuilds_only_on_change(tmp_path):
    src, build = tmp_path / "fw", tmp_path / "build"
    _project(src)
    env = {**os.environ, "EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}
    _run(["cmake", "-S", str(src), "-B", str(build), "-G", "Unix Makefiles",
          f"-DEDGEKIT_EXECUTABLE={sys.executable}"], env, tmp_path)

    log = _run(["cmake", "--build", str(build)], env, tmp_path)
    assert "edgekit: model tiny_model" in log
    gen_c = build / "edgekit" / "tiny_model" / "tiny_model.c"
    manifest = json.loads((build / "edgekit" / "tiny_model" / "bundle" / "manifest.json")
                          .read_text())
    rec = manifest["targets"][TARGET]["files"][0]
    out = _run([str(build / "check_model"), str(rec["bytes"]), rec["sha256"]], env, tmp_path)
    assert f"size {rec['bytes']} sha256 {rec['sha256']} align 0 input image 1x1x8x8" in out
    assert out.strip().endswith("OK")
    depfile = (build / "edgekit" / "tiny_model" / "tiny_model.d").read_text()
    assert "recipe.toml" in depfile and "tinymodel.py" in depfile

    # Nothing changed: no edgekit step, nothing recompiled, generated file untouched.
    mtime = gen_c.stat().st_mtime_ns
    log = _run(["cmake", "--build", str(build)], env, tmp_path)
    assert "edgekit: model" not in log and "Building C object" not in log
    assert gen_c.stat().st_mtime_ns == mtime

    # Touching the recipe reruns the step (a build-cache hit: same bytes) and relinks.
    time.sleep(1.1)
    (src / "model" / "recipe.toml").touch()
    log = _run(["cmake", "--build", str(build)], env, tmp_path)
    assert "edgekit: model tiny_model" in log and "tiny_model.c.o" in log
    assert gen_c.stat().st_mtime_ns > mtime
    _run([str(build / "check_model"), str(rec["bytes"]), rec["sha256"]], env, tmp_path)

    # Touching the model's module (recorded in the depfile) reruns it too.
    mtime = gen_c.stat().st_mtime_ns
    time.sleep(1.1)
    (src / "model" / "tinymodel.py").touch()
    log = _run(["cmake", "--build", str(build)], env, tmp_path)
    assert "edgekit: model tiny_model" in log
    assert gen_c.stat().st_mtime_ns > mtime

    # Then quiet again.
    log = _run(["cmake", "--build", str(build)], env, tmp_path)
    assert "edgekit: model" not in log and "Building C object" not in log

    # Changing the weights changes the embedded bytes; the program checks the new manifest.
    time.sleep(1.1)
    (src / "model" / "tinymodel.py").write_text(MODEL_PY.replace("manual_seed(0)",
                                                                 "manual_seed(1)"))
    _run(["cmake", "--build", str(build)], env, tmp_path)
    manifest2 = json.loads((build / "edgekit" / "tiny_model" / "bundle" / "manifest.json")
                           .read_text())
    rec2 = manifest2["targets"][TARGET]["files"][0]
    assert rec2["sha256"] != rec["sha256"]
    out = _run([str(build / "check_model"), str(rec2["bytes"]), rec2["sha256"]], env, tmp_path)
    assert out.strip().endswith("OK")


@pytest.mark.slow
def test_cmake_find_package_and_bad_arguments(tmp_path):
    src = tmp_path / "fw"
    _project(src)
    folder = subprocess.run([sys.executable, "-m", "edgekit", "cmake-dir"], capture_output=True,
                            text=True, check=True).stdout.strip()
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(fw C)\n"
        f'find_package(edgekit CONFIG REQUIRED PATHS "{folder}" NO_DEFAULT_PATH)\n'
        "add_executable(check_model main.c sha256.c)\n"
        "edgekit_add_model(TARGET check_model NAME 9lives RECIPE model/recipe.toml "
        "BACKEND_TARGET x86-tflite-fp32)\n")
    proc = subprocess.run(["cmake", "-S", str(src), "-B", str(tmp_path / "b"),
                           f"-DEDGEKIT_EXECUTABLE={sys.executable}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "NAME '9lives' is not a valid C identifier" in proc.stderr
