"""C++ (and gRPC) code generation from .proto files with Debian's protoc."""

_PROTOC = "/usr/bin/protoc"
_GRPC_PLUGIN = "/usr/bin/grpc_cpp_plugin"

def cc_grpc_proto_library(name, srcs, deps = [], grpc = True, **kwargs):
    """Generates C++ message (and gRPC service) code for `srcs` and wraps it.

    Paths are relative to the workspace root, so `proto/poolside/v1/query.proto` is
    included as "proto/poolside/v1/query.pb.h".

    Args:
      name: the cc_library to create.
      srcs: .proto files in this package.
      deps: other cc_grpc_proto_library targets whose .proto files these import.
      grpc: also generate gRPC service stubs.
      **kwargs: passed to the cc_library (visibility, ...).
    """
    pkg = native.package_name()
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    dep_protos = [d + "_protos" for d in deps]
    native.filegroup(name = name + "_protos", srcs = srcs + dep_protos)
    grpc_flags = ("--grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=%s " % _GRPC_PLUGIN) if grpc else ""
    native.genrule(
        name = name + "_gen",
        srcs = srcs + dep_protos,
        outs = outs,
        cmd = ("%s -I. -I/usr/include --cpp_out=$(GENDIR) " % _PROTOC) + grpc_flags +
              " ".join(["%s/%s" % (pkg, s) for s in srcs]),
        message = "protoc " + name,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["@system//:grpc", "@system//:protobuf"],
        **kwargs
    )

def cc_system_grpc_proto_library(name, protos, root, grpc = True, package = "grpc-proto", **kwargs):
    """Generates C++ message (and gRPC service) code for .proto files a Debian
    package installs under `root` (for example grpc-proto's
    /usr/share/grpc-proto, or libpg-query-dev's /usr/include/pg_query), so that
    a protocol defined elsewhere is compiled from its published definition
    rather than copied here.

    `protos` are paths relative to `root`; the headers are included with this
    package's path first: "proto/grpc/health/v1/health.grpc.pb.h" for
    "grpc/health/v1/health.proto" generated in package "proto".

    Args:
      name: the cc_library to create.
      protos: .proto paths relative to `root`.
      root: the directory the package installs them in.
      grpc: also generate gRPC service stubs (and depend on gRPC).
      package: the Debian package that installs them, named when one is missing.
      **kwargs: passed to the cc_library (visibility, ...).
    """
    outs = []
    for proto in protos:
        base = proto[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    checks = "".join([
        "test -f {f} || {{ echo '{f} is missing: install Debian {p} (make deps)' >&2; exit 1; }}; ".format(
            f = root + "/" + proto,
            p = package,
        )
        for proto in protos
    ])
    grpc_flags = ("--grpc_out=$(RULEDIR) --plugin=protoc-gen-grpc=%s " % _GRPC_PLUGIN) if grpc else ""
    native.genrule(
        name = name + "_gen",
        outs = outs,
        cmd = checks +
              ("%s -I%s -I/usr/include --cpp_out=$(RULEDIR) " % (_PROTOC, root)) +
              grpc_flags + " ".join(protos),
        message = "protoc " + name,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        # The generated code includes its headers by their path under `root`.
        includes = ["."],
        deps = (["@system//:grpc"] if grpc else []) + ["@system//:protobuf"],
        **kwargs
    )
