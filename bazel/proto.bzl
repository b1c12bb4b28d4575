"""C++ code generation from .proto files with Debian's protoc.

Each .proto set gives two libraries: the messages (`*_cc_proto`, protobuf
only) and, when the files define services, the gRPC stubs (`*_cc_grpc`, the
messages plus gRPC). A service core depends on message libraries only; its
gRPC adapter, server main and clients depend on the `*_cc_grpc` library
(tools/check_layers.sh checks this in `make test`).
"""

_PROTOC = "/usr/bin/protoc"
_GRPC_PLUGIN = "/usr/bin/grpc_cpp_plugin"

def _outputs(bases, grpc):
    msg = []
    svc = []
    for base in bases:
        msg += [base + ".pb.h", base + ".pb.cc"]
        if grpc:
            svc += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    return msg, svc

def _libraries(name, grpc_name, msg, svc, msg_deps, **kwargs):
    native.cc_library(
        name = name,
        srcs = [o for o in msg if o.endswith(".cc")],
        hdrs = [o for o in msg if o.endswith(".h")],
        deps = msg_deps + ["@system//:protobuf"],
        **kwargs
    )
    if grpc_name:
        native.cc_library(
            name = grpc_name,
            srcs = [o for o in svc if o.endswith(".cc")],
            hdrs = [o for o in svc if o.endswith(".h")],
            deps = [":" + name, "@system//:grpc"],
            **kwargs
        )

def cc_proto_libraries(name, srcs, deps = [], grpc_name = None, **kwargs):
    """Generates C++ message code, and gRPC service code if grpc_name is set.

    Paths are relative to the workspace root, so `proto/poolside/v1/query.proto` is
    included as "proto/poolside/v1/query.pb.h" (messages) and
    "proto/poolside/v1/query.grpc.pb.h" (services).

    Args:
      name: the message-only cc_library to create (protobuf, no gRPC).
      srcs: .proto files in this package.
      deps: other cc_proto_libraries message targets whose .proto files these import.
      grpc_name: if set, also a cc_library of this name with the service stubs
        (depends on `name` and gRPC).
      **kwargs: passed to the cc_libraries (visibility, ...).
    """
    pkg = native.package_name()
    msg, svc = _outputs([src[:-len(".proto")] for src in srcs], grpc_name != None)
    dep_protos = [d + "_protos" for d in deps]
    native.filegroup(name = name + "_protos", srcs = srcs + dep_protos)
    grpc_flags = ("--grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=%s " % _GRPC_PLUGIN) if grpc_name else ""
    native.genrule(
        name = name + "_gen",
        srcs = srcs + dep_protos,
        outs = msg + svc,
        cmd = ("%s -I. -I/usr/include --cpp_out=$(GENDIR) " % _PROTOC) + grpc_flags +
              " ".join(["%s/%s" % (pkg, s) for s in srcs]),
        message = "protoc " + name,
    )
    _libraries(name, grpc_name, msg, svc, deps, **kwargs)

def cc_system_proto_libraries(
        name,
        protos,
        root,
        grpc_name = None,
        package = "grpc-proto",
        optimize_for = None,
        **kwargs):
    """Generates C++ message (and gRPC service) code for .proto files a Debian
    package installs under `root` (for example grpc-proto's
    /usr/share/grpc-proto, or libpg-query-dev's /usr/include/pg_query), so that
    a protocol defined elsewhere is compiled from its published definition
    rather than copied here.

    `protos` are paths relative to `root`; the headers are included with this
    package's path first: "proto/grpc/health/v1/health.grpc.pb.h" for
    "grpc/health/v1/health.proto" generated in package "proto".

    Args:
      name: the message-only cc_library to create (protobuf, no gRPC).
      protos: .proto paths relative to `root`.
      root: the directory the package installs them in.
      grpc_name: if set, also a cc_library of this name with the service stubs
        (depends on `name` and gRPC).
      package: the Debian package that installs them, named when one is missing.
      optimize_for: None, or "CODE_SIZE" to generate the messages as if the
        files said `option optimize_for = CODE_SIZE;` (protoc's `code_size`
        generator parameter; the installed files cannot be edited): generic,
        reflection-driven parsing and serialization instead of code per
        message, a fraction of the compile time and slower to parse. Only for
        messages off the request path.
      **kwargs: passed to the cc_libraries (visibility, copts, ...).
    """
    msg, svc = _outputs([proto[:-len(".proto")] for proto in protos], grpc_name != None)
    checks = "".join([
        "test -f {f} || {{ echo '{f} is missing: install Debian {p} (make deps)' >&2; exit 1; }}; ".format(
            f = root + "/" + proto,
            p = package,
        )
        for proto in protos
    ])
    grpc_flags = ("--grpc_out=$(RULEDIR) --plugin=protoc-gen-grpc=%s " % _GRPC_PLUGIN) if grpc_name else ""
    if optimize_for not in (None, "CODE_SIZE"):
        fail("optimize_for: None or \"CODE_SIZE\", not %r" % optimize_for)
    cpp_parameter = "code_size:" if optimize_for == "CODE_SIZE" else ""
    native.genrule(
        name = name + "_gen",
        outs = msg + svc,
        cmd = checks +
              ("%s -I%s -I/usr/include --cpp_out=%s$(RULEDIR) " % (_PROTOC, root, cpp_parameter)) +
              grpc_flags + " ".join(protos),
        message = "protoc " + name,
    )

    # The generated code includes its headers by their path under `root`.
    _libraries(name, grpc_name, msg, svc, [], includes = ["."], **kwargs)
