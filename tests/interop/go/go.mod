// The Go client of the interop test (see ../README.md).
//
// The module owns the path prism.dev so that the package the protos name in
// their go_package, prism.dev/gen/prism/v1, lands inside it at ./gen/prism/v1:
// protoc writes it there with --go_opt=module=prism.dev. That folder is
// generated on every run and never committed.
//
// The code generators are tools of this module, so go.sum pins them together
// with the runtime they must match, and one download serves both.
module prism.dev

go 1.26.0

require (
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.2 // indirect
)

tool (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc
	google.golang.org/protobuf/cmd/protoc-gen-go
)
