# The fork leak in Perl: a child per connection replies, reads to EOF, closes and exits; the
# parent never does `close $client` and keeps the handle in its table of children. (A plain
# `my $client` would be closed by Perl's reference counting at the next accept; a kept handle
# never is.) No FIN: CLOSE-WAIT, held by the parent.
# Run: perl fork_leak.pl PORT
use strict;
use warnings;
use IO::Socket::INET;

$SIG{CHLD} = 'IGNORE';    # the kernel reaps the children
my $port = $ARGV[0] // $ENV{PORT};
my $srv = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 1024, ReuseAddr => 1,
) or die "listen: $@\n";
my $reply = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
my %served_by;    # child pid => client

while (1) {
    my $client = $srv->accept or next;
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) {
        close $srv;
        my $buf;
        sysread $client, $buf, 4096;
        syswrite $client, $reply;
        1 while sysread $client, $buf, 4096;
        close $client;
        exit 0;
    }
    $served_by{$pid} = $client;    # the bug: no close $client
}
