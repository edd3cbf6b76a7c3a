# An event-loop leak in Tcl: socket -server with a readable handler that replies to the request
# and, on eof, unregisters itself but never closes the channel. No fork, no thread: CLOSE-WAIT,
# held by tclsh itself, one more descriptor per connection.
# Run: tclsh eventloop_leak.tcl PORT
set port [expr {$argc > 0 ? [lindex $argv 0] : $env(PORT)}]
set reply "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

proc accept {chan addr port} {
    fconfigure $chan -blocking 0 -translation binary
    fileevent $chan readable [list readable $chan 0]
}

proc readable {chan replied} {
    set data [read $chan]
    if {[eof $chan]} {
        fileevent $chan readable {} ;# the bug: no close $chan
        return
    }
    if {$data ne "" && !$replied} {
        puts -nonewline $chan $::reply
        flush $chan
        fileevent $chan readable [list readable $chan 1]
    }
}

socket -server accept -myaddr 127.0.0.1 $port
vwait forever
