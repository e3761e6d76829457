# Imports the requested nixpkgs the same way for every template.
request:
import (/. + request.nixpkgs) {
  inherit (request) system;
  # claude-code is unfree in nixpkgs; allow exactly that, nothing else.
  config.allowUnfreePredicate = pkg: (pkg.pname or (builtins.parseDrvName pkg.name).name) == "claude-code";
  overlays = [ ];
}
