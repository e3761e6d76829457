package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/claude-sandbox/claude-sandbox/closure"
	"github.com/claude-sandbox/claude-sandbox/nixgen"
)

type buildResult struct {
	Backend     string `json:"backend"`
	Network     bool   `json:"network"`
	Key         string `json:"key"`
	OutPath     string `json:"outPath"`
	DrvPath     string `json:"drvPath"`
	Cached      bool   `json:"cached"`
	ClosureSize uint64 `json:"closureSize,omitempty"`
}

// pushSummary is build --push --json's output: what was built, then what
// the push did.
type pushSummary struct {
	Closures []buildResult      `json:"closures"`
	Push     closure.PushResult `json:"push"`
}

func (a *app) newBuildCmd() *cobra.Command {
	var asJSON, printExpr, all bool
	var push, secretKey string
	cmd := &cobra.Command{
		Use:   "build [BACKEND]",
		Short: "Build (or find in the cache) the sandbox closure and print its store path",
		Example: `  claude-sandbox build --with python3
  claude-sandbox build vm --json
  claude-sandbox build --all --push file:///srv/nix-cache --secret-key cache-key.sec`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if cmd.Flags().Changed("backend") && a.opts.Backend != args[0] {
					return &usageError{msg: fmt.Sprintf("build %s --backend %s: two different backends", args[0], a.opts.Backend), hint: "name the backend once"}
				}
				a.opts.Backend = args[0]
			}
			var target closure.PushTarget
			switch {
			case push != "":
				// Checked before anything is built: a bad key must not cost a build.
				t, err := closure.NewPushTarget(push, secretKey)
				if err != nil {
					return err
				}
				target = t
			case secretKey != "":
				return &usageError{msg: "--secret-key signs what --push copies", hint: "add --push URL"}
			}
			variants := []nixgen.Variant{{Backend: a.opts.Backend, Network: a.networkOn()}}
			if all {
				if len(args) == 1 || cmd.Flags().Changed("backend") {
					return &usageError{msg: "--all builds every backend", hint: "drop the backend, or drop --all"}
				}
				// The original project's six packages: where the network
				// is a launch-time switch, one closure serves both settings.
				variants = nixgen.Variants()
			}
			if printExpr {
				for _, v := range variants {
					b, req, err := a.builderAndRequestFor(cmd.Context(), v.Backend, v.Network)
					if err != nil {
						return err
					}
					path, gen, err := b.Expr(req)
					if err != nil {
						return err
					}
					fmt.Fprintf(a.stdout, "# %s\n%s", path, gen.Expr)
				}
				return nil
			}
			var results []buildResult
			var outPaths []string
			for _, v := range variants {
				r, err := a.buildOne(cmd, v, asJSON)
				if err != nil {
					return err
				}
				results = append(results, r)
				outPaths = append(outPaths, r.OutPath)
			}
			if push != "" {
				b, _, err := a.builderAndRequest(cmd.Context())
				if err != nil {
					return err
				}
				pushed, err := b.Push(cmd.Context(), target, outPaths...)
				a.closeProgress()
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(a.stdout).Encode(pushSummary{Closures: results, Push: pushed})
				}
			}
			switch {
			case asJSON && all:
				return json.NewEncoder(a.stdout).Encode(results)
			case asJSON:
				return json.NewEncoder(a.stdout).Encode(results[0])
			}
			for _, r := range results {
				fmt.Fprintln(a.stdout, r.OutPath)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print {key, outPath, drvPath, cached, closureSize} as JSON; with --push, {closures: [those], push: {paths, bytes, seconds, …}}")
	cmd.Flags().BoolVar(&printExpr, "print-expr", false, "print the generated Nix expression instead of building it")
	cmd.Flags().BoolVar(&all, "all", false, "build every backend and network variant (the original's six packages)")
	cmd.Flags().StringVar(&push, "push", "", "copy the built closures to this binary cache in one nix copy (zstd unless the URL says compression=)")
	cmd.Flags().StringVar(&secretKey, "secret-key", "", "sign what --push copies with this Nix secret key file (the URL's secret-key= parameter)")
	cmd.Flags().AddFlagSet(a.buildFlags())
	return cmd
}

// buildOne ensures one variant. An explicit build checks a cache hit with
// the store itself, which a launch skips for speed.
func (a *app) buildOne(cmd *cobra.Command, v nixgen.Variant, withSize bool) (buildResult, error) {
	ctx := cmd.Context()
	b, req, err := a.builderAndRequestFor(ctx, v.Backend, v.Network)
	if err != nil {
		return buildResult{}, err
	}
	c, err := b.Ensure(ctx, req)
	a.closeProgress()
	if err != nil {
		return buildResult{}, err
	}
	if c.Cached {
		valid, err := b.Verify(ctx, c)
		if err != nil {
			return buildResult{}, err
		}
		if !valid {
			req.Rebuild = true
			if c, err = b.Ensure(ctx, req); err != nil {
				return buildResult{}, err
			}
		}
	}
	r := buildResult{Backend: req.Options.Backend, Network: v.Network, Key: c.Key, OutPath: c.OutPath, DrvPath: c.DrvPath, Cached: c.Cached}
	if withSize {
		if r.ClosureSize, err = b.ClosureSize(ctx, c.OutPath); err != nil {
			return buildResult{}, err
		}
	}
	return r, nil
}
