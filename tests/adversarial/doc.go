// Package adversarial runs each attack of internal/attack against a real
// all-in-one gateway process (built once with -tags faultinject), checks
// that the bound the attack meets holds, and that a bystander streaming
// events meanwhile loses nothing. README.md lists the attacks, their
// bounds, settings, metrics and tests.
package adversarial
