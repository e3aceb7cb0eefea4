"""@faiss_gpu: the GPU part of FAISS 1.7.3, built outside the repo by scripts/build_faiss_gpu.sh.

The cache holds lib/libfaiss_gpu.a (only the faiss/gpu objects) and include/faiss/gpu;
it is linked beside Debian's CPU libfaiss.a (//third_party/system:faiss). Without a
finished cache the repository still defines :faiss_gpu, but building it fails and says
how to make the cache, so nothing that does not depend on it is affected.

The cache is looked at when the repository is fetched: after running the script, make
Bazel look again with `bazel sync --only=faiss_gpu` (or restart the server).
"""

_DIR_VAR = "SHARDVEC_FAISS_GPU_DIR"
_CACHE_VAR = "SHARDVEC_CACHE"
_REQUIRED = ["DONE", "lib/libfaiss_gpu.a", "include/faiss/gpu/GpuIndexFlat.h"]

_COMPLETE_BUILD = """\
package(default_visibility = ["//visibility:public"])

# From {dir}
cc_library(
    name = "faiss_gpu",
    srcs = ["lib/libfaiss_gpu.a"],
    hdrs = glob(["include/faiss/gpu/**"]),
    includes = ["include"],
    linkstatic = True,
    deps = [
        "@//third_party/system:faiss",
        "@cuda//:cublas",
        "@cuda//:cudart",
    ],
)
"""

_MISSING_BUILD = """\
package(default_visibility = ["//visibility:public"])

# No finished FAISS GPU build in {dir} (missing: {missing}).
genrule(
    name = "missing_cache",
    outs = ["missing_cache.cc"],
    cmd = "echo 'faiss_gpu: no FAISS GPU build in {dir} (missing: {missing}); " +
          "run scripts/build_faiss_gpu.sh, then bazel sync --only=faiss_gpu' >&2; exit 1",
)

cc_library(
    name = "faiss_gpu",
    srcs = [":missing_cache"],
)
"""

def _cache_dir(ctx):
    env = ctx.os.environ
    if env.get(_DIR_VAR):
        return env[_DIR_VAR]
    root = env.get(_CACHE_VAR) or (env.get("HOME", "") + "/.cache/shardvec")
    return root + "/faiss-gpu-1.7.3"

def _faiss_gpu_repository_impl(ctx):
    cache = _cache_dir(ctx)
    missing = [f for f in _REQUIRED if not ctx.path(cache + "/" + f).exists]
    if missing:
        ctx.file("BUILD", _MISSING_BUILD.format(dir = cache, missing = ", ".join(missing)))
        return
    ctx.symlink(cache + "/lib", "lib")
    ctx.symlink(cache + "/include", "include")
    ctx.file("BUILD", _COMPLETE_BUILD.format(dir = cache))

faiss_gpu_repository = repository_rule(
    implementation = _faiss_gpu_repository_impl,
    environ = [_DIR_VAR, _CACHE_VAR, "HOME"],
    local = True,
    doc = "Exposes @<name>//:faiss_gpu from the cache of scripts/build_faiss_gpu.sh.",
)
