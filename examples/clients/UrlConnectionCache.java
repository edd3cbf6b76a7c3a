// HttpURLConnection: the JDK keeps up to 5 idle connections per server in its keep-alive cache
// and looks at one only when it next takes it (or drops it after its own 5 s timeout): one
// request at a time leaves one connection, which waits in CLOSE-WAIT between bursts and is
// closed by the next. Bounded.
// Run: java UrlConnectionCache.java URL
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;

public class UrlConnectionCache {
    public static void main(String[] args) throws Exception {
        URL url = new URL(args[0]);
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < 5; i++) {
                HttpURLConnection c = (HttpURLConnection) url.openConnection();
                try (InputStream in = c.getInputStream()) {
                    in.readAllBytes();
                }
            }
            Thread.sleep(600);
        }
        Thread.sleep(1500);
        System.exit(0);
    }
}
