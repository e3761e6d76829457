// Command execfloor is the least a Go launcher can do: read a finished bwrap
// invocation and exec it. BenchmarkLaunch times it beside claude-sandbox and
// a bare bwrap, to tell what the Go runtime's start-up costs apart from
// what claude-sandbox's own work costs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"syscall"
)

func main() {
	var inv struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
		Env  []string `json:"env"`
	}
	data, err := os.ReadFile(os.Args[1])
	if err == nil {
		err = json.Unmarshal(data, &inv)
	}
	if err == nil {
		err = syscall.Exec(inv.Path, inv.Args, inv.Env)
	}
	fmt.Fprintln(os.Stderr, "execfloor:", err)
	os.Exit(1)
}
