package egress

import (
	"net/netip"
)

// nonPublic says why a is not a public internet address, or "" when it
// is. Written as tests on the address's bytes rather than a table of
// prefixes so the package has no initialiser.
//
// IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) are judged as the IPv4
// address they carry, and so are NAT64 addresses (64:ff9b::/96, which an
// IPv6-only host's DNS64 returns for every IPv4 destination):
// 64:ff9b::7f00:1 is refused as loopback, 64:ff9b::5db8:d822 allowed as
// 93.184.216.34.
func nonPublic(a netip.Addr) string {
	if a.Zone() != "" {
		return "a scoped (zoned) address"
	}
	a = a.Unmap()
	if a.Is4() {
		return nonPublic4(a.As4())
	}
	return nonPublic6(a.As16())
}

// nonPublic4 follows IANA's IPv4 Special-Purpose Address Registry, plus
// multicast and the reserved class E space. The registry's few global
// entries (AS112, AMT) are not listed; 192.0.0.0/24 is refused whole
// although two of its addresses are global, since nothing a sandbox runs
// needs them.
func nonPublic4(b [4]byte) string {
	switch {
	case b[0] == 0:
		return `"this network" (0.0.0.0/8)`
	case b[0] == 10:
		return "private (RFC 1918)"
	case b[0] == 100 && b[1]&0xc0 == 64:
		return "shared carrier-grade NAT space (100.64.0.0/10)"
	case b[0] == 127:
		return "loopback"
	case b[0] == 169 && b[1] == 254:
		return "link-local (169.254.0.0/16, where cloud metadata services answer)"
	case b[0] == 172 && b[1]&0xf0 == 16:
		return "private (RFC 1918)"
	case b[0] == 192 && b[1] == 0 && b[2] == 0:
		return "IETF protocol assignments (192.0.0.0/24)"
	case b[0] == 192 && b[1] == 0 && b[2] == 2:
		return "documentation (192.0.2.0/24)"
	case b[0] == 192 && b[1] == 88 && b[2] == 99:
		return "the deprecated 6to4 relay anycast (192.88.99.0/24)"
	case b[0] == 192 && b[1] == 168:
		return "private (RFC 1918)"
	case b[0] == 198 && b[1]&0xfe == 18:
		return "benchmarking (198.18.0.0/15)"
	case b[0] == 198 && b[1] == 51 && b[2] == 100:
		return "documentation (198.51.100.0/24)"
	case b[0] == 203 && b[1] == 0 && b[2] == 113:
		return "documentation (203.0.113.0/24)"
	case b[0]&0xf0 == 224:
		return "multicast"
	case b[0]&0xf0 == 240:
		return "reserved (240.0.0.0/4, broadcast included)"
	}
	return ""
}

// nonPublic6: only 2000::/3 is global unicast today, so everything
// outside it is refused (after NAT64 is judged by its IPv4 address), and
// inside it the IETF, documentation and 6to4 blocks.
func nonPublic6(b [16]byte) string {
	switch {
	case b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && allZero(b[4:12]):
		// 64:ff9b::/96, the well-known NAT64 prefix.
		v4 := [4]byte{b[12], b[13], b[14], b[15]}
		if why := nonPublic4(v4); why != "" {
			return "NAT64 of " + netip.AddrFrom4(v4).String() + ", " + why
		}
		return ""
	case b[0]&0xe0 == 0x20:
		// 2000::/3, global unicast, but for these blocks.
		switch {
		case b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8:
			return "documentation (2001:db8::/32)"
		case b[0] == 0x20 && b[1] == 0x01 && b[2]&0xfe == 0:
			return "IETF protocol assignments (2001::/23, Teredo included)"
		case b[0] == 0x20 && b[1] == 0x02:
			return "6to4 (2002::/16)"
		case b[0] == 0x3f && b[1] == 0xff && b[2]&0xf0 == 0:
			return "documentation (3fff::/20)"
		}
		return ""
	case allZero(b[:15]) && b[15] == 0:
		return "the unspecified address (::)"
	case allZero(b[:15]) && b[15] == 1:
		return "loopback"
	case allZero(b[:12]):
		return "IPv4-compatible (deprecated ::/96)"
	case b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0 && b[5] == 1:
		return "local-use NAT64 (64:ff9b:1::/48)"
	case b[0]&0xfe == 0xfc:
		return "unique local (fc00::/7)"
	case b[0] == 0xfe && b[1]&0xc0 == 0x80:
		return "link-local (fe80::/10)"
	case b[0] == 0xfe && b[1]&0xc0 == 0xc0:
		return "site-local (deprecated fec0::/10)"
	case b[0] == 0xff:
		return "multicast"
	}
	return "outside IPv6 global unicast (2000::/3)"
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
