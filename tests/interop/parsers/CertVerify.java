// CertVerify ROOT.pem CA.pem DEVICE.pem — Java (Debian 12: OpenJDK 17)
// parses the certificates with CertificateFactory and validates the path
// device -> production CA with CertPathValidator (PKIX), the OEM root as the
// trust anchor, revocation off.  Exit 0 and "OK subject", or 1 and the error.
import java.io.FileInputStream;
import java.io.InputStream;
import java.security.cert.CertPath;
import java.security.cert.CertPathValidator;
import java.security.cert.CertificateFactory;
import java.security.cert.PKIXParameters;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.util.Arrays;
import java.util.Collections;

public class CertVerify {
    static X509Certificate load(CertificateFactory cf, String path) throws Exception {
        try (InputStream in = new FileInputStream(path)) {
            X509Certificate c = (X509Certificate) cf.generateCertificate(in);
            c.getSubjectX500Principal();
            c.getNonCriticalExtensionOIDs();
            return c;
        }
    }

    public static void main(String[] args) {
        if (args.length != 3) {
            System.err.println("usage: CertVerify ROOT.pem CA.pem DEVICE.pem");
            System.exit(2);
        }
        try {
            CertificateFactory cf = CertificateFactory.getInstance("X.509");
            X509Certificate root = load(cf, args[0]), ca = load(cf, args[1]), dev = load(cf, args[2]);
            CertPath path = cf.generateCertPath(Arrays.asList(dev, ca));
            PKIXParameters p = new PKIXParameters(Collections.singleton(new TrustAnchor(root, null)));
            p.setRevocationEnabled(false);
            CertPathValidator.getInstance("PKIX").validate(path, p);
            java.util.Set<String> nc = dev.getNonCriticalExtensionOIDs();
            System.out.println("OK " + dev.getSubjectX500Principal() + " (" + (nc == null ? 0 : nc.size())
                               + " non-critical extensions)");
        } catch (Exception e) {
            System.err.println(e);
            System.exit(1);
        }
    }
}
