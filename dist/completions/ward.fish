# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ward_global_optspecs
    string join \n table= state-dir= h/help V/version
end

function __fish_ward_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ward_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ward_using_subcommand
    set -l cmd (__fish_ward_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ward -n "__fish_ward_needs_command" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_needs_command" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_needs_command" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_needs_command" -s V -l version -d 'Print version'
complete -c ward -n "__fish_ward_needs_command" -f -a "check" -d 'Validate a policy; warnings for rules that can never match'
complete -c ward -n "__fish_ward_needs_command" -f -a "compile" -d 'Print the nftables table the policy compiles to'
complete -c ward -n "__fish_ward_needs_command" -f -a "plan" -d 'Show the difference between the live table and the policy'
complete -c ward -n "__fish_ward_needs_command" -f -a "apply" -d 'Check, snapshot the live table, then atomically replace it with the policy'
complete -c ward -n "__fish_ward_needs_command" -f -a "confirm" -d 'Keep the policy applied with --confirm-within: call off the automatic revert'
complete -c ward -n "__fish_ward_needs_command" -f -a "rollback" -d 'Restore the table as it was before the last apply'
complete -c ward -n "__fish_ward_needs_command" -f -a "revert-timer" -d 'Started by `apply --confirm-within`: restores the snapshot at the deadline unless the apply was confirmed'
complete -c ward -n "__fish_ward_needs_command" -f -a "run" -d 'Apply the policy, then serve its DNS proxy until stopped (the policy stays enforced)'
complete -c ward -n "__fish_ward_needs_command" -f -a "engine" -d 'Enforce the policy with ward\'s own data plane, forwarding raw frames between a LAN and a WAN interface (AF_PACKET); SIGHUP reloads FILE (connections carry on), SIGTERM stops and prints its counters (served meanwhile as Prometheus metrics with --metrics)'
complete -c ward -n "__fish_ward_needs_command" -f -a "remove" -d 'Delete ward\'s table (and nothing else)'
complete -c ward -n "__fish_ward_needs_command" -f -a "status" -d 'What is installed: policy hash, time applied, per-rule counters'
complete -c ward -n "__fish_ward_needs_command" -f -a "explain" -d 'Which rule decides a packet, and why'
complete -c ward -n "__fish_ward_needs_command" -f -a "generate" -d 'Print shell completions or the man page, generated from this command line'
complete -c ward -n "__fish_ward_needs_command" -f -a "lab" -d 'A LAN / firewall / WAN lab in network namespaces'
complete -c ward -n "__fish_ward_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ward -n "__fish_ward_using_subcommand check" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand check" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand check" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand compile" -l format -r -f -a "nft\t''
json\t''"
complete -c ward -n "__fish_ward_using_subcommand compile" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand compile" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand compile" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand plan" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand plan" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand plan" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand plan" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand apply" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand apply" -l confirm-within -d 'Restore the snapshot unless `ward confirm` runs within this many seconds' -r
complete -c ward -n "__fish_ward_using_subcommand apply" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand apply" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand apply" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand confirm" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand confirm" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand confirm" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand confirm" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand rollback" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand rollback" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand rollback" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand revert-timer" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand revert-timer" -l token -r
complete -c ward -n "__fish_ward_using_subcommand revert-timer" -l deadline -d 'Seconds since the Unix epoch' -r
complete -c ward -n "__fish_ward_using_subcommand revert-timer" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand revert-timer" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand revert-timer" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand run" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand run" -l metrics -d 'Serve Prometheus metrics on this address (e.g. 127.0.0.1:9580); off by default' -r
complete -c ward -n "__fish_ward_using_subcommand run" -l log -d 'Write one ECS JSON event per logged packet to FILE ("-" for stdout)' -r -F
complete -c ward -n "__fish_ward_using_subcommand run" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand run" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand run" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand engine" -l lan -d 'The LAN-side interface' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l wan -d 'The WAN-side interface' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l lan-addr -d 'The engine\'s own address and prefix on the LAN side (e.g. 192.168.1.1/24)' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l wan-addr -d 'The engine\'s own address and prefix on the WAN side' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l gateway -d 'Next hop for destinations off both links (on the WAN side)' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l netns -d 'Run inside this named network namespace' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l conntrack-capacity -d 'Connections tracked at most; new ones beyond are dropped (conntrack_full)' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l metrics -d 'Serve Prometheus metrics on this address (e.g. 127.0.0.1:9580), in the namespace the engine runs in; off by default' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l log -d 'Write one ECS JSON event per logged packet (`log: true` rules, default denies) to FILE ("-" for stdout)' -r -F
complete -c ward -n "__fish_ward_using_subcommand engine" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand engine" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand engine" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand remove" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand remove" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand remove" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand remove" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand status" -l netns -r
complete -c ward -n "__fish_ward_using_subcommand status" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand status" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand status" -l json
complete -c ward -n "__fish_ward_using_subcommand status" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand explain" -l src -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l dst -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l fqdn -d 'A destination name (as a client would have resolved it)' -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l proto -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l dport -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l direction -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l in-interface -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l out-interface -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand explain" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand explain" -l established -d 'Explain a packet of an already established flow'
complete -c ward -n "__fish_ward_using_subcommand explain" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand generate; and not __fish_seen_subcommand_from completions man help" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand generate; and not __fish_seen_subcommand_from completions man help" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand generate; and not __fish_seen_subcommand_from completions man help" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand generate; and not __fish_seen_subcommand_from completions man help" -f -a "completions" -d 'Completions for SHELL (bash, zsh, fish, elvish, powershell)'
complete -c ward -n "__fish_ward_using_subcommand generate; and not __fish_seen_subcommand_from completions man help" -f -a "man" -d 'Man pages (roff) for ward and each of its commands, written into DIR'
complete -c ward -n "__fish_ward_using_subcommand generate; and not __fish_seen_subcommand_from completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from completions" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from completions" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from completions" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from man" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from man" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from man" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "completions" -d 'Completions for SHELL (bash, zsh, fish, elvish, powershell)'
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "man" -d 'Man pages (roff) for ward and each of its commands, written into DIR'
complete -c ward -n "__fish_ward_using_subcommand generate; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -l lan -d 'Name of the LAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -l fw -d 'Name of the firewall\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -l wan -d 'Name of the WAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -l policy -d 'Policy to apply in the firewall (default: the bundled examples/lab.yaml)' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -f -a "up" -d 'Create the namespaces and apply examples/lab.yaml in the firewall'
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -f -a "down" -d 'Remove the lab\'s namespaces'
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -f -a "demo" -d 'Up, run the probes and print what each one saw, then down'
complete -c ward -n "__fish_ward_using_subcommand lab; and not __fish_seen_subcommand_from up down demo help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from up" -l lan -d 'Name of the LAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from up" -l fw -d 'Name of the firewall\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from up" -l wan -d 'Name of the WAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from up" -l policy -d 'Policy to apply in the firewall (default: the bundled examples/lab.yaml)' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from up" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from up" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from up" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from down" -l lan -d 'Name of the LAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from down" -l fw -d 'Name of the firewall\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from down" -l wan -d 'Name of the WAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from down" -l policy -d 'Policy to apply in the firewall (default: the bundled examples/lab.yaml)' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from down" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from down" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from down" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from demo" -l lan -d 'Name of the LAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from demo" -l fw -d 'Name of the firewall\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from demo" -l wan -d 'Name of the WAN host\'s namespace' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from demo" -l policy -d 'Policy to apply in the firewall (default: the bundled examples/lab.yaml)' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from demo" -l table -d 'Name of the one nftables table ward owns (family inet)' -r
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from demo" -l state-dir -d 'Where snapshots, pending confirmations and the audit log are kept' -r -F
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from demo" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "up" -d 'Create the namespaces and apply examples/lab.yaml in the firewall'
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "down" -d 'Remove the lab\'s namespaces'
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "demo" -d 'Up, run the probes and print what each one saw, then down'
complete -c ward -n "__fish_ward_using_subcommand lab; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "check" -d 'Validate a policy; warnings for rules that can never match'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "compile" -d 'Print the nftables table the policy compiles to'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "plan" -d 'Show the difference between the live table and the policy'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "apply" -d 'Check, snapshot the live table, then atomically replace it with the policy'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "confirm" -d 'Keep the policy applied with --confirm-within: call off the automatic revert'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "rollback" -d 'Restore the table as it was before the last apply'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "revert-timer" -d 'Started by `apply --confirm-within`: restores the snapshot at the deadline unless the apply was confirmed'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "run" -d 'Apply the policy, then serve its DNS proxy until stopped (the policy stays enforced)'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "engine" -d 'Enforce the policy with ward\'s own data plane, forwarding raw frames between a LAN and a WAN interface (AF_PACKET); SIGHUP reloads FILE (connections carry on), SIGTERM stops and prints its counters (served meanwhile as Prometheus metrics with --metrics)'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "remove" -d 'Delete ward\'s table (and nothing else)'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "status" -d 'What is installed: policy hash, time applied, per-rule counters'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "explain" -d 'Which rule decides a packet, and why'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "generate" -d 'Print shell completions or the man page, generated from this command line'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "lab" -d 'A LAN / firewall / WAN lab in network namespaces'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from check compile plan apply confirm rollback revert-timer run engine remove status explain generate lab help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ward -n "__fish_ward_using_subcommand help; and __fish_seen_subcommand_from generate" -f -a "completions" -d 'Completions for SHELL (bash, zsh, fish, elvish, powershell)'
complete -c ward -n "__fish_ward_using_subcommand help; and __fish_seen_subcommand_from generate" -f -a "man" -d 'Man pages (roff) for ward and each of its commands, written into DIR'
complete -c ward -n "__fish_ward_using_subcommand help; and __fish_seen_subcommand_from lab" -f -a "up" -d 'Create the namespaces and apply examples/lab.yaml in the firewall'
complete -c ward -n "__fish_ward_using_subcommand help; and __fish_seen_subcommand_from lab" -f -a "down" -d 'Remove the lab\'s namespaces'
complete -c ward -n "__fish_ward_using_subcommand help; and __fish_seen_subcommand_from lab" -f -a "demo" -d 'Up, run the probes and print what each one saw, then down'
