package nixdaemon

// A NAR crosses the worker protocol unframed in two places: the reply of
// NarFromPath and the body of AddToStore before 1.25. The only way to know
// where it ends is to parse it; skipNAR does that with the grammar of
// parseDump (src/libutil/archive.cc), streaming file contents so a large
// archive costs no memory. It checks structure, not names: the daemon that
// receives the archive validates those itself.

const (
	narMagic      = "nix-archive-1"
	maxNARToken   = 32         // "nix-archive-1", "type", "executable", …
	maxNARName    = 255        // NAME_MAX
	maxNARTarget  = 4095       // PATH_MAX without its NUL
	maxNARDepth   = 2048       // nesting: PATH_MAX allows at most 2048 "a/" levels
	maxNARContent = 1<<63 - 1  // streamed, never held
	maxNAREntries = 10_000_000 // entries of one directory
)

// skipNAR consumes one NAR from r.
func skipNAR(r *reader) error {
	if err := expectToken(r, narMagic); err != nil {
		return err
	}
	if err := expectToken(r, "("); err != nil {
		return err
	}
	depth := 0 // directories open around the current position
	for {
		// Here a node's "(" has just been read.
		isDir, err := skipNode(r)
		if err != nil {
			return err
		}
		if isDir {
			depth++
			if depth > maxNARDepth {
				return protoErr(r.op, "NAR nested deeper than %d", maxNARDepth)
			}
		} else {
			if depth == 0 {
				return nil // the archive was a single file or symlink
			}
			if err := expectToken(r, ")"); err != nil { // closes the entry
				return err
			}
		}
		for {
			next, err := nextDirectoryItem(r)
			if err != nil {
				return err
			}
			if next {
				break
			}
			depth-- // ")" closed a directory node
			if depth == 0 {
				return nil
			}
			if err := expectToken(r, ")"); err != nil { // closes its entry
				return err
			}
		}
	}
}

// skipNode consumes "type" and, for a file or symlink, everything up to
// and including the node's ")". For a directory it stops after the type
// and reports true: its items follow.
func skipNode(r *reader) (bool, error) {
	if err := expectToken(r, "type"); err != nil {
		return false, err
	}
	typ, err := r.token("NAR node type", maxNARToken)
	if err != nil {
		return false, err
	}
	switch typ {
	case "regular":
		for {
			tag, err := r.token("NAR file tag", maxNARToken)
			if err != nil {
				return false, err
			}
			switch tag {
			case ")":
				return false, nil
			case "executable":
				if err := expectToken(r, ""); err != nil {
					return false, err
				}
			case "contents":
				if _, err := r.skipString("NAR file contents", maxNARContent); err != nil {
					return false, err
				}
				return false, expectToken(r, ")")
			default:
				return false, protoErr(r.op, "NAR: unknown file attribute %q", tag)
			}
		}
	case "symlink":
		if err := expectToken(r, "target"); err != nil {
			return false, err
		}
		if _, err := r.token("NAR symlink target", maxNARTarget); err != nil {
			return false, err
		}
		return false, expectToken(r, ")")
	case "directory":
		return true, nil
	}
	return false, protoErr(r.op, "NAR: unknown node type %q", typ)
}

// nextDirectoryItem reads what follows in a directory: "entry" "(" "name"
// NAME "node" "(" (true: a node follows) or ")" (false: the directory
// ended).
func nextDirectoryItem(r *reader) (bool, error) {
	tag, err := r.token("NAR directory tag", maxNARToken)
	if err != nil {
		return false, err
	}
	switch tag {
	case ")":
		return false, nil
	case "entry":
	default:
		return false, protoErr(r.op, "NAR: unknown directory tag %q", tag)
	}
	for _, tok := range []string{"(", "name"} {
		if err := expectToken(r, tok); err != nil {
			return false, err
		}
	}
	if _, err := r.token("NAR entry name", maxNARName); err != nil {
		return false, err
	}
	for _, tok := range []string{"node", "("} {
		if err := expectToken(r, tok); err != nil {
			return false, err
		}
	}
	return true, nil
}

func expectToken(r *reader, want string) error {
	got, err := r.token("NAR token", maxNARToken)
	if err != nil {
		return err
	}
	if got != want {
		return protoErr(r.op, "NAR: got %q, want %q", got, want)
	}
	return nil
}

// token reads a short string that is checked and dropped at once, so it
// does not count against the message budget: an archive of many small
// files is not a large allocation.
func (r *reader) token(what string, max uint64) (string, error) {
	s, err := r.string(what, max)
	if err == nil {
		r.budget += int64(len(s)) + wordSize
	}
	return s, err
}
