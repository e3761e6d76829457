// Command claude-sandbox runs Claude Code in a sandbox built from nixpkgs.
package main

import "os"

func main() { os.Exit(run(os.Args[1:])) }
