"""C++ protobuf/gRPC code generation with Debian's protoc and grpc_cpp_plugin (offline)."""

def cc_grpc_library(name, srcs, deps = [], grpc = True, visibility = None):
    """Generates and compiles the C++ code for `srcs`; `deps` are other cc_grpc_library targets."""
    hdrs = []
    cc_srcs = []
    for s in srcs:
        stem = s[:-len(".proto")]
        hdrs.append(stem + ".pb.h")
        cc_srcs.append(stem + ".pb.cc")
        if grpc:
            hdrs.append(stem + ".grpc.pb.h")
            cc_srcs.append(stem + ".grpc.pb.cc")
    plugin = ["--grpc_out=$(GENDIR)", "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin"] if grpc else []
    native.genrule(
        name = name + "_codegen",
        srcs = srcs + [d + "_protos" for d in deps],
        outs = hdrs + cc_srcs,
        cmd = " ".join(
            ["/usr/bin/protoc", "--proto_path=.", "--proto_path=$(GENDIR)", "--cpp_out=$(GENDIR)"] +
            plugin + ["$(locations %s)" % s for s in srcs],
        ),
    )
    # Transitive: a proto that imports this one also needs what this one imports.
    native.filegroup(name = name + "_protos", srcs = srcs + [d + "_protos" for d in deps], visibility = visibility)
    native.cc_library(
        name = name,
        srcs = cc_srcs,
        hdrs = hdrs,
        visibility = visibility,
        deps = deps + ["//third_party/system:grpcpp" if grpc else "//third_party/system:protobuf"],
    )
