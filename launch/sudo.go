package launch

import (
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// SudoReexec runs this very command again through sudo (--sudo): sudo's
// own policy decides, it asks for the password, and of the environment
// only the names the launch reads or the sandbox may receive (KeptBySudo)
// and the --env names survive (sudo --preserve-env=NAMES; the values never
// appear on a command line), less those that steer a root process
// (SteersRoot). It returns only on failure.
func SudoReexec(args, extraEnv []string) error {
	sudo, err := exec.LookPath("sudo")
	if err != nil {
		return &NotRootError{Reason: "--sudo: sudo is not installed"}
	}
	exe, err := os.Executable()
	if err != nil {
		return &NotRootError{Reason: "--sudo: cannot find the claude-sandbox executable: " + err.Error()}
	}
	err = unix.Exec(sudo, sudoArgv(exe, args, extraEnv, os.LookupEnv), os.Environ())
	return &NotRootError{Reason: "--sudo: running sudo: " + err.Error()}
}

// sudoArgv is sudo's command line: names of variables to keep, never values.
func sudoArgv(exe string, args, extraEnv []string, lookupEnv func(string) (string, bool)) []string {
	var keep []string
	seen := map[string]bool{}
	for _, list := range [][]string{KeptBySudo(), extraEnv} {
		for _, name := range list {
			if _, set := lookupEnv(name); set && !seen[name] && envName.MatchString(name) && !SteersRoot(name) {
				seen[name] = true
				keep = append(keep, name)
			}
		}
	}
	argv := []string{"sudo"}
	if len(keep) > 0 {
		argv = append(argv, "--preserve-env="+strings.Join(keep, ","))
	}
	argv = append(argv, "--", exe)
	return append(argv, args...)
}
