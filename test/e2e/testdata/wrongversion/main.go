// Command wrongversion is a sink plugin built for a sink protocol version
// that pgtrail does not speak, to prove the host refuses it clearly.
package main

import (
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/pgtrail/pgtrail/plugins/sdk"
)

func main() {
	hs := sdk.Handshake
	hs.ProtocolVersion = sdk.ProtocolVersion + 98
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  hs,
		VersionedPlugins: map[int]plugin.PluginSet{int(hs.ProtocolVersion): {sdk.PluginName: &sdk.GRPCPlugin{}}},
		GRPCServer:       func(opts []grpc.ServerOption) *grpc.Server { return grpc.NewServer(opts...) },
	})
}
