# The fix of eventloop_leak.tcl: the same event-loop server closes the channel on eof, so the
# client's FIN is answered by the server's. Clean.
# Run: tclsh closes.tcl PORT
set port [expr {$argc > 0 ? [lindex $argv 0] : $env(PORT)}]
set reply "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"

proc accept {chan addr port} {
    fconfigure $chan -blocking 0 -translation binary
    fileevent $chan readable [list readable $chan 0]
}

proc readable {chan replied} {
    set data [read $chan]
    if {[eof $chan]} {
        close $chan ;# the fix
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
