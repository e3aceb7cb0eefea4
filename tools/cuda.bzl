"""CUDA C++ through nvcc in a genrule; the objects go into a static cc_library."""

NVCC = "/usr/local/cuda/bin/nvcc"

def cuda_library(name, srcs, hdrs = [], deps = [], nvcc_flags = [], archs = ["90"], visibility = None, **kwargs):
    """Compiles each .cu in `srcs` for `archs` (plus PTX for the last, for newer GPUs)."""
    gencode = ["-gencode=arch=compute_%s,code=sm_%s" % (a, a) for a in archs]
    gencode.append("-gencode=arch=compute_%s,code=compute_%s" % (archs[-1], archs[-1]))
    objs = []
    for s in srcs:
        stem = s[:-len(".cu")]
        out = "_cuda_objs/%s/%s.o" % (name, stem)
        native.genrule(
            name = "%s_nvcc_%s" % (name, stem.replace("/", "_")),
            srcs = [s] + hdrs,
            outs = [out],
            cmd = " ".join([
                NVCC,
                "-std=c++17",
                "-O3",
                "-lineinfo",
                "-Xcompiler",
                "-fPIC",
                "-I.",
                "-I$(GENDIR)",
                "--expt-relaxed-constexpr",
                "--extended-lambda",
            ] + gencode + nvcc_flags + ["-c", "$(location %s)" % s, "-o", "$@"]),
        )
        objs.append(out)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@cuda//:cudart"],
        linkstatic = True,
        alwayslink = True,
        visibility = visibility,
        **kwargs
    )
