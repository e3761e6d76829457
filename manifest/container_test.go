package manifest

import "testing"

func TestContainerSection(t *testing.T) {
	s := "/nix/store/0000000000000000000000000000000a-"
	good := Container{Toplevel: s + "system", Root: s + "root", HostName: "claude-sandbox", Nsenter: s + "util-linux/bin/nsenter"}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(c *Container){
		func(c *Container) { c.Root = "/usr" },
		func(c *Container) { c.Toplevel = "" },
		func(c *Container) { c.HostName = "-x" },
		func(c *Container) { c.HostName = "a b" },
		func(c *Container) { c.Nsenter = s + "x/../../../bin/sh" },
	} {
		c := good
		bad(&c)
		if c.validate() == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}
