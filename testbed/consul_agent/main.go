// Command consul is HashiCorp Consul's own command line (agent, members, leave, kv, operator, ...),
// built from the github.com/hashicorp/consul module at the version go.mod pins.
//
// Consul's repository has `replace` directives in its root go.mod, so `go install
// github.com/hashicorp/consul@vX` refuses to build it. This main module of consul-reconciler's
// tests requires Consul as a library instead (a requirement's own replaces are ignored, so the
// published consul/api and consul/sdk modules are used) and hands the arguments to the command
// table Consul registers. No Consul source is copied here. testbed/real_consul.py builds it.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/consul/command"
	consulcli "github.com/hashicorp/consul/command/cli"
	"github.com/mitchellh/cli"
)

func main() {
	ui := &consulcli.BasicUI{BasicUi: cli.BasicUi{Reader: os.Stdin, Writer: os.Stdout, ErrorWriter: os.Stderr}}
	runner := &cli.CLI{
		Name:        "consul",
		Args:        os.Args[1:],
		Commands:    command.RegisteredCommands(ui),
		HelpWriter:  os.Stdout,
		ErrorWriter: os.Stderr,
	}
	code, err := runner.Run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "consul: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}
